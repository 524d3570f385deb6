"""
An OpenAI-compatible proposer (vLLM, Ollama, llama.cpp server, or OpenAI itself) through the `openai` SDK.

OPENAI_BASE_URL points it at the server; OPENAI_API_KEY if the server wants
one. Same contract as Claude: a forced function call, or, for servers without tool calling, a JSON
object in the reply. Cost comes from the price table ('local' models cost nothing).
Servers with automatic prefix caching (OpenAI, vLLM) reuse the longest prefix seen before, so the
request keeps prompt.py's order: the same tools, then the fixed text and program.md, then the
incumbent and the situation, the task last.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from infra.proposers.base import ProposerError
from infra.proposers.llm import MAX_OUTPUT_TOKENS, LLMProposer, ToolAnswer
from infra.proposers.pricing import ImpossibleUsage, Usage
from infra.proposers.prompt import Prompt
from infra.proposers.tool_schema import TOOLS

MAX_RETRIES = 4
TIMEOUT_S = 600.0
JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


class OpenAICompatProposer(LLMProposer):
    name = "openai"

    def __init__(self, model: str | None = None, base_url: str | None = None):
        super().__init__()
        import openai

        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        self.model = model or os.environ.get("AUTORESEARCH_OPENAI_MODEL") or ""
        if not self.model:
            raise ProposerError(
                "the OpenAI-compatible proposer needs a model name (--model or AUTORESEARCH_OPENAI_MODEL)"
            )
        if not base_url and not os.environ.get("OPENAI_API_KEY"):
            raise ProposerError(
                "the OpenAI-compatible proposer needs OPENAI_BASE_URL (a local server) or OPENAI_API_KEY"
            )
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=os.environ.get("OPENAI_API_KEY") or "not-needed",
            max_retries=MAX_RETRIES,
            timeout=TIMEOUT_S,
        )

    def _send(self, prompt: Prompt, tool_name: str, turns: list[Any]) -> ToolAnswer:
        functions = [
            {
                "type": "function",
                "function": {"name": t["name"], "description": t["description"], "parameters": t["input_schema"]},
            }
            for t in TOOLS
        ]
        response = self.client.chat.completions.create(
            model=self.model,
            max_tokens=MAX_OUTPUT_TOKENS,
            messages=[
                {"role": "system", "content": "\n\n".join(prompt.system())},
                {"role": "user", "content": "\n\n".join(prompt.user())},
                *turns,
            ],
            tools=functions,
            tool_choice={"type": "function", "function": {"name": tool_name}},
        )
        u = response.usage
        try:  # the SDK does not check what the server reported (Usage does)
            cached = getattr(getattr(u, "prompt_tokens_details", None), "cached_tokens", 0) or 0 if u else 0
            usage = Usage((u.prompt_tokens - cached) if u else 0, u.completion_tokens if u else 0, 0, cached)
        except TypeError as exc:
            raise ImpossibleUsage(f"the model server reported a usage that is not token counts ({exc})") from None
        message = response.choices[0].message
        text = (
            message.tool_calls[0].function.arguments
            if message.tool_calls
            else (JSON_OBJECT.search(message.content or "") or [None])[0]
        )
        if text is None:
            return ToolAnswer(
                None, message, usage, error=f"no {tool_name} function call and no JSON object in the reply"
            )
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            return ToolAnswer(None, message, usage, error=f"the arguments are not valid JSON: {exc}")
        return ToolAnswer(data if isinstance(data, dict) else None, message, usage)

    def _reask(self, answer: ToolAnswer, error: str) -> list[Any]:
        message = answer.raw
        note = f"That answer was invalid: {error}. Call the function again with a corrected answer."
        if message.tool_calls:
            call = message.tool_calls[0]
            return [
                {
                    "role": "assistant",
                    "content": message.content or "",
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.function.name, "arguments": call.function.arguments},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": call.id, "content": note},
            ]
        return [{"role": "assistant", "content": message.content or ""}, {"role": "user", "content": note}]
