"""
Local fake language-model servers for the tests: the Anthropic Messages API and the OpenAI
chat completions API, speaking just enough of each for the real SDKs pointed at them.

A responder maps (path, request JSON) to (status, response JSON); every request is recorded.
The Anthropic side models prompt caching (PromptCache): the usage it reports says what a real
server would have cached and read, so the tests see whether the proposer's prefix is shared.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Responder = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]


CHARS_PER_TOKEN = 4
MIN_CACHEABLE_TOKENS = 1024  # Sonnet's minimum cacheable prompt length


def canonical(value: Any) -> str:
    """A request part as a cache key: sorted JSON without the cache_control markers themselves."""

    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k != "cache_control"}
        return [strip(x) for x in v] if isinstance(v, list) else v

    return json.dumps(strip(value), sort_keys=True, separators=(",", ":"))


def estimated_tokens(value: Any) -> int:
    return len(canonical(value)) // CHARS_PER_TOKEN


class PromptCache:
    """Anthropic's prompt caching as documented: the request is read in the order tools -> system ->
    (tool_choice) -> messages; a block with cache_control is a breakpoint, and the prefix up to it is
    cached if it is at least MIN_CACHEABLE_TOKENS long. A prefix seen before is read from the cache
    (the longest one counts), the rest up to the last breakpoint is written, the remainder is input.
    tool_choice sits before the messages because changing it invalidates only the messages' cache."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    @staticmethod
    def items(body: dict[str, Any]) -> list[Any]:
        system = body.get("system") or []
        items: list[Any] = [["tool", t] for t in body.get("tools") or []]
        items += [["system", b] for b in ([{"type": "text", "text": system}] if isinstance(system, str) else system)]
        items.append(["tool_choice", body.get("tool_choice")])
        for message in body.get("messages") or []:
            content = message["content"]
            for block in [{"type": "text", "text": content}] if isinstance(content, str) else content:
                items.append([message["role"], block])
        return items

    def usage(self, body: dict[str, Any], output_tokens: int) -> dict[str, int]:
        items = self.items(body)
        breakpoints = [i for i, (_, block) in enumerate(items) if isinstance(block, dict) and "cache_control" in block]
        prefixes = [
            (canonical([body.get("model"), items[: i + 1]]), estimated_tokens(items[: i + 1])) for i in breakpoints
        ]
        cacheable = [(key, tokens) for key, tokens in prefixes if tokens >= MIN_CACHEABLE_TOKENS]
        with self.lock:
            read = max((tokens for key, tokens in cacheable if key in self.seen), default=0)
            self.seen.update(key for key, _ in cacheable)
        write = max(0, (cacheable[-1][1] if cacheable else 0) - read)
        return {
            "input_tokens": max(1, estimated_tokens(items) - read - write),
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": write,
            "cache_read_input_tokens": read,
        }


class FakeLLMServer:
    def __init__(self, responder: Responder, prompt_cache: bool = True):
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.usages: list[dict[str, int]] = []  # the usage each successful answer reported, in order
        self.cache = PromptCache() if prompt_cache else None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                status, payload = server.responder(self.path, body)
                if status == 200 and payload.get("type") == "message" and server.cache is not None:
                    payload = {**payload, "usage": server.cache.usage(body, payload["usage"]["output_tokens"])}
                if status == 200:
                    server.usages.append(payload.get("usage", {}))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("retry-after-ms", "10")  # the SDKs honour it: fast retries
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "FakeLLMServer":
        self.thread.start()
        return self

    def __exit__(self, *args: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


USAGE = {"input_tokens": 1500, "output_tokens": 400, "cache_creation_input_tokens": 3000, "cache_read_input_tokens": 0}
CACHED_USAGE = {
    "input_tokens": 1500,
    "output_tokens": 400,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 3000,
}


def anthropic_tool_use(name: str, tool_input: dict[str, Any], usage: dict[str, int] = USAGE) -> dict[str, Any]:
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": [
            {
                "type": "tool_use",
                "id": f"toolu_{len(json.dumps(tool_input)) % 10**6}",
                "name": name,
                "input": tool_input,
            }
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": usage,
    }


def anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def openai_function_call(
    name: str, arguments: dict[str, Any] | str, prompt_tokens: int = 2000, completion_tokens: int = 300
) -> dict[str, Any]:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": "local",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": name, "arguments": args}}],
                },
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def request_text(body: dict[str, Any]) -> str:
    """Every text in a request (system and messages), for assertions and for scripted answers."""
    parts: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if key in ("text", "content", "system") or isinstance(item, (list, dict)):
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(body.get("system"))
    walk(body.get("messages"))
    return "\n".join(parts)
