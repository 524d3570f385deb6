"""
The Claude proposer, through the `anthropic` SDK.

The key comes from ANTHROPIC_API_KEY (the SDK reads it; we never store or print it) and
ANTHROPIC_BASE_URL moves the endpoint (the tests point it at a local fake server).
Structured output through a forced tool call. Prompt caching: both tools on every call, then
cache breakpoints after the fixed system text, after program.md, after the incumbent and after
the situation (prompt.py's Prompt), so propose, fix and revise share one prefix (Anthropic allows
four breakpoints; a prefix under MIN_CACHEABLE_TOKENS is not cached). Retries with exponential backoff on 429,
5xx, 529 (overloaded), connection errors and timeouts are the SDK's (MAX_RETRIES).
"""

from __future__ import annotations

import os
from typing import Any

from infra.proposers.base import ProposerError
from infra.proposers.llm import MAX_OUTPUT_TOKENS, LLMProposer, ToolAnswer
from infra.proposers.pricing import Usage
from infra.proposers.prompt import Prompt
from infra.proposers.tool_schema import TOOLS

DEFAULT_MODEL = "claude-sonnet-4-6"
MAX_RETRIES = 4
TIMEOUT_S = 300.0
CACHED = {"type": "ephemeral"}


def request_system(prompt: Prompt) -> list[dict[str, Any]]:
    """The system blocks, each ending at a cache breakpoint: the fixed text, then program.md."""
    return [{"type": "text", "text": text, "cache_control": CACHED} for text in prompt.system()]


def request_user(prompt: Prompt) -> list[dict[str, Any]]:
    """The first user turn: the incumbent and the situation end at breakpoints; the task comes after them."""
    *cached, task = prompt.user()
    return [
        *({"type": "text", "text": text, "cache_control": CACHED} for text in cached),
        {"type": "text", "text": task},
    ]


class ClaudeProposer(LLMProposer):
    name = "claude"

    def __init__(self, model: str | None = None):
        super().__init__()
        import anthropic

        if not os.environ.get("ANTHROPIC_API_KEY"):
            raise ProposerError("the Claude proposer needs ANTHROPIC_API_KEY in the environment")
        self.model = model or os.environ.get("AUTORESEARCH_CLAUDE_MODEL") or DEFAULT_MODEL
        self.client = anthropic.Anthropic(max_retries=MAX_RETRIES, timeout=TIMEOUT_S)

    def _send(self, prompt: Prompt, tool_name: str, turns: list[Any]) -> ToolAnswer:
        response = self.client.messages.create(
            model=self.model,
            max_tokens=MAX_OUTPUT_TOKENS,
            tools=TOOLS,
            tool_choice={"type": "tool", "name": tool_name},
            system=request_system(prompt),
            messages=[{"role": "user", "content": request_user(prompt)}, *turns],
        )
        u = response.usage  # the SDK does not check what the server reported (Usage does)
        usage = Usage(
            u.input_tokens or 0,
            u.output_tokens or 0,
            getattr(u, "cache_creation_input_tokens", 0) or 0,
            getattr(u, "cache_read_input_tokens", 0) or 0,
        )
        calls = [b for b in response.content if b.type == "tool_use" and b.name == tool_name]
        data = calls[0].input if calls and isinstance(calls[0].input, dict) else None
        return ToolAnswer(data=data, raw=response, usage=usage)

    def _reask(self, answer: ToolAnswer, error: str) -> list[Any]:
        content = [block.model_dump(exclude_none=True) for block in answer.raw.content]
        tool_ids = [b.id for b in answer.raw.content if b.type == "tool_use"]
        message = f"That answer was invalid: {error}. Call the tool again with a corrected answer."
        reply = (
            [{"type": "tool_result", "tool_use_id": tool_ids[0], "is_error": True, "content": message}]
            if tool_ids
            else [{"type": "text", "text": message}]
        )
        return [{"role": "assistant", "content": content}, {"role": "user", "content": reply}]
