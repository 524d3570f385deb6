"""
What every language-model proposer shares: one call with its deadline and its cost accounted, the spending cap, and
one re-ask after an invalid answer. Providers (claude.py, openai_compat.py) only say how to send a request and read a
tool call. The request's text is prompt.py's; the tools and the checks an answer passes are tool_schema.py's.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from infra.proposers.base import Proposal, ProposalContext, Revision, StopResearch
from infra.proposers.pricing import ImpossibleUsage, Usage, cost_usd, worst_case_cost_usd
from infra.proposers.prompt import Prompt, fix_task, prompt, propose_task, revise_task
from infra.proposers.tool_schema import PROPOSE_TOOL, REVISE_TOOL, TOOLS, InvalidProposal, missing_fields, proposal_from
from infra.records import ChangeType

MAX_OUTPUT_TOKENS = 8192


class CallFailed(RuntimeError):
    """A model call that gave no usable answer in time, or reported an impossible usage: recorded, never retried."""


class CallTimedOut(TimeoutError):
    pass


# A whole call, the SDK's own retries included, ends by this deadline: the SDK's timeout is per read, and a server
# that sends a byte now and then held one call for as long as it liked (red team), the run `running` all the while.
CALL_DEADLINE_S = 15 * 60


def within_deadline(call: Callable[[], Any], seconds: float) -> Any:
    """call() in a daemon thread, waited for at most seconds (CallTimedOut after; the thread is abandoned, and dies with
    the process). Its exception, if it raised one, is raised here."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True, name="model-call")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise CallTimedOut(f"no answer within {seconds:g} s (the server was still sending, or silent)")
    if "error" in box:
        raise box["error"]
    return box["value"]


class SpendingCapReached(StopResearch):
    """The next call could pass --max-cost."""


@dataclass
class ToolAnswer:
    data: dict[str, Any] | None  # the tool's input, or None when the model did not call it
    raw: Any  # the provider's message, to continue the conversation
    usage: Usage
    error: str = ""  # why data is unusable as JSON, when it is


class LLMProposer:
    """Shared logic; subclasses implement _send (one request) and _reask (continue after a bad answer)."""

    name = "llm"
    model = ""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.max_cost_left: float | None = None

    # --- provider hooks ---------------------------------------------------------

    def _send(self, prompt: Prompt, tool_name: str, turns: list[Any]) -> ToolAnswer:
        """One request: TOOLS, prompt in its cache order, turns after it; tool_choice forces tool_name."""
        raise NotImplementedError

    def _reask(self, answer: ToolAnswer, error: str) -> list[Any]:
        """Conversation turns that show the model its bad answer and the error."""
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------

    def _call(self, purpose: str, prompt: Prompt, tool_name: str, turns: list[Any]) -> ToolAnswer:
        prompt_chars = prompt.chars() + len(str(TOOLS)) + sum(len(str(t)) for t in turns)
        spent = sum(c["cost_usd"] for c in self.calls)
        if (
            self.max_cost_left is not None
            and spent + worst_case_cost_usd(prompt_chars, MAX_OUTPUT_TOKENS, self.model) > self.max_cost_left
        ):
            raise SpendingCapReached(
                f"the next {purpose} call could pass the spending cap (${self.max_cost_left - spent:.4f} left)"
            )
        started = time.monotonic()
        try:
            answer = within_deadline(lambda: self._send(prompt, tool_name, turns), CALL_DEADLINE_S)
        except (ImpossibleUsage, CallTimedOut) as exc:  # what it cost is unknown: counted at the worst case
            worst = worst_case_cost_usd(prompt_chars, MAX_OUTPUT_TOKENS, self.model)
            self.calls.append(
                {
                    "purpose": purpose,
                    "model": self.model,
                    "input_tokens": 0,
                    "output_tokens": 0,
                    "cache_write_tokens": 0,
                    "cache_read_tokens": 0,
                    "cost_usd": worst,
                    "latency_s": time.monotonic() - started,
                }
            )
            raise CallFailed(str(exc)) from None
        self.calls.append(
            {
                "purpose": purpose,
                "model": self.model,
                "input_tokens": answer.usage.input_tokens,
                "output_tokens": answer.usage.output_tokens,
                "cache_write_tokens": answer.usage.cache_write_tokens,
                "cache_read_tokens": answer.usage.cache_read_tokens,
                "cost_usd": cost_usd(answer.usage, self.model),
                "latency_s": time.monotonic() - started,
            }
        )
        return answer

    def _ask_for_proposal(self, ctx: ProposalContext, purpose: str, task: str, edit_base: str) -> Proposal:
        """One answer and, if it is invalid, one re-ask; then a failed proposal (error set)."""
        self.max_cost_left = ctx.max_cost_left
        request = prompt(ctx, task)
        turns: list[Any] = []
        error = ""
        first_call = len(self.calls)  # the result carries the calls made for it
        for attempt in range(2):
            try:
                answer = self._call(
                    purpose if attempt == 0 else f"{purpose}-reask", request, PROPOSE_TOOL["name"], turns
                )
            except CallFailed as exc:
                return Proposal(
                    hypothesis="",
                    change_type=ChangeType.UNKNOWN,
                    code=ctx.incumbent_code,
                    error=f"the model call failed: {exc}",
                    calls=self.calls[first_call:],
                )
            try:
                if answer.error:
                    raise InvalidProposal(answer.error)
                proposal = proposal_from(answer.data, ctx.incumbent_code, edit_base)
                proposal.calls = self.calls[first_call:]
                return proposal
            except InvalidProposal as exc:
                error = str(exc)
                turns = turns + self._reask(answer, error)
        hypothesis = answer.data.get("hypothesis", "") if isinstance(answer.data, dict) else ""
        return Proposal(
            hypothesis=hypothesis if isinstance(hypothesis, str) else "",
            change_type=ChangeType.UNKNOWN,
            code=ctx.incumbent_code,
            error=f"invalid proposal after one re-ask: {error}",
            calls=self.calls[first_call:],
        )

    def propose(self, ctx: ProposalContext) -> Proposal:
        return self._ask_for_proposal(ctx, "propose", propose_task(ctx), ctx.incumbent_code)

    def fix(self, ctx: ProposalContext, candidate: Proposal, error: str, log_tail: str) -> Proposal:
        return self._ask_for_proposal(ctx, "fix", fix_task(candidate, error, log_tail), candidate.code)

    def revise_strategy(self, ctx: ProposalContext) -> Revision:
        """A new Strategy section and lessons; one re-ask, then the strategy stays as it is."""
        self.max_cost_left = ctx.max_cost_left
        request = prompt(ctx, revise_task(ctx))
        turns: list[Any] = []
        first_call = len(self.calls)
        for attempt in range(2):
            try:
                answer = self._call("revise" if attempt == 0 else "revise-reask", request, REVISE_TOOL["name"], turns)
            except CallFailed as exc:
                return Revision(
                    ctx.strategy, f"strategy revision failed: {exc}; the strategy is unchanged", self.calls[first_call:]
                )
            data = answer.data
            missing = missing_fields(data, REVISE_TOOL)
            if not missing:
                return Revision(data["strategy"].strip(), data["lessons"].strip(), self.calls[first_call:])
            turns = turns + self._reask(answer, f"revise_strategy needs non-empty strings: {', '.join(missing)}")
        return Revision(
            ctx.strategy,
            "strategy revision failed: no valid answer; the strategy is unchanged",
            self.calls[first_call:],
        )
