"""
What every language-model proposer shares: the prompt, the tool schemas, validation,
the one re-ask, cost accounting and the spending cap. Providers (claude.py,
openai_compat.py) only say how to send a request and read a tool call.

Prompt layout (stable prefix first, so prompt caching can reuse it):
    system   role and rules + prepare.py's API contract                     [cached]
    user     the current Strategy (program.md) + the incumbent train.py     [cached]
             the hardware facts + a compact history + the task
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import prepare
from infra.proposers.base import Proposal, ProposalContext, StopResearch
from infra.proposers.pricing import Usage, cost_usd, worst_case_cost_usd
from infra.records import ChangeType, IterationRecord, Status
from infra.research.code_edit import classify_change, syntax_error
from infra.sandbox.compute_record import describe

MAX_OUTPUT_TOKENS = 8192
HISTORY_ROWS = 30

ROLE_AND_RULES = """You are an ML research agent. You improve train.py, a PyTorch training script for \
Fashion-MNIST (10 classes, 28x28 grey images), one change at a time.

How you are judged: each candidate train.py is trained in a sandbox for a fixed wall-clock budget on the \
hardware described below, then fixed code scores the model it saved on 10,000 validation images it never \
sees. A change is kept only if its validation accuracy beats the incumbent's mean by more than the measured \
noise (several seeds). Printing accuracy achieves nothing; only the saved model counts.

Rules:
- Return the whole new train.py, or exact search/replace edits to the incumbent, through the tool.
- One idea per change, stated as a falsifiable hypothesis. Say whether it is parametric (only the \
UPPER_CASE constants change) or structural.
- Use prepare.py's API as documented; do not re-implement data loading. No network, no other files.
- Stop at an epoch boundary when TrainingBudget.another_epoch_fits() says no, call budget.epoch_done() \
after every epoch, then save_model(model). Reason about what fits the budget: the incumbent's epochs and \
seconds per epoch are given.
- Keep UPPER_CASE hyperparameters at the top of the file."""

PREPARE_CONTRACT = "prepare.py (fixed; you cannot change it) documents its API as follows:\n" + (prepare.__doc__ or "")

PROPOSE_TOOL = {
    "name": "propose_train_py",
    "description": "Propose the next candidate train.py.",
    "input_schema": {
        "type": "object",
        "properties": {
            "hypothesis": {"type": "string", "description": "what you change and why it should raise validation accuracy"},
            "change_type": {"type": "string", "enum": ["parametric", "structural"]},
            "expected_effect": {"type": "string", "description": "expected change in validation accuracy and epochs"},
            "train_py": {"type": "string", "description": "the whole new train.py (or use edits)"},
            "edits": {
                "type": "array",
                "description": "exact search/replace edits to the incumbent; each search must occur exactly once",
                "items": {"type": "object", "properties": {"search": {"type": "string"}, "replace": {"type": "string"}},
                          "required": ["search", "replace"]},
            },
        },
        "required": ["hypothesis", "change_type", "expected_effect"],
    },
}

REVISE_TOOL = {
    "name": "revise_strategy",
    "description": "Rewrite the Strategy section of program.md from the results so far.",
    "input_schema": {
        "type": "object",
        "properties": {
            "strategy": {"type": "string", "description": "the new Strategy section (markdown, no heading)"},
            "lessons": {"type": "string", "description": "lessons learned, one per line"},
        },
        "required": ["strategy", "lessons"],
    },
}


class InvalidProposal(ValueError):
    """A tool answer that cannot become a runnable train.py."""


class SpendingCapReached(StopResearch):
    """The next call could pass --max-cost."""


@dataclass
class ToolAnswer:
    data: dict[str, Any] | None  # the tool's input, or None when the model did not call it
    raw: Any  # the provider's message, to continue the conversation
    usage: Usage
    error: str = ""  # why data is unusable as JSON, when it is


def apply_edits(code: str, edits: list[dict[str, str]]) -> str:
    for n, edit in enumerate(edits, 1):
        search, replace = edit.get("search", ""), edit.get("replace", "")
        count = code.count(search) if search else 0
        if count != 1:
            raise InvalidProposal(f"edit {n}: its search text occurs {count} times in the incumbent; it must occur exactly once")
        code = code.replace(search, replace, 1)
    return code


def proposal_from(data: dict[str, Any] | None, incumbent: str) -> Proposal:
    """Validate a tool answer; InvalidProposal says what is wrong, for the re-ask."""
    if not data:
        raise InvalidProposal("no propose_train_py tool call in the answer")
    for key in ("hypothesis", "change_type"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise InvalidProposal(f"missing or empty field {key!r}")
    if data["change_type"] not in ("parametric", "structural"):
        raise InvalidProposal(f"change_type must be 'parametric' or 'structural', got {data['change_type']!r}")
    if isinstance(data.get("train_py"), str) and data["train_py"].strip():
        code = data["train_py"]
    elif isinstance(data.get("edits"), list) and data["edits"]:
        code = apply_edits(incumbent, data["edits"])
    else:
        raise InvalidProposal("give either train_py (the whole file) or a non-empty list of edits")
    problem = syntax_error(code)
    if problem:
        raise InvalidProposal(f"the new train.py is not valid Python: {problem}")
    if code == incumbent:
        raise InvalidProposal("the new train.py is identical to the incumbent")
    measured = classify_change(incumbent, code)  # trust the AST over the model's label
    return Proposal(hypothesis=data["hypothesis"].strip(),
                    change_type=measured if measured != ChangeType.NONE else ChangeType(data["change_type"]),
                    code=code, expected_effect=str(data.get("expected_effect", "")))


def history_text(history: list[IterationRecord]) -> str:
    if not history:
        return "No iterations yet."
    lines = ["iteration | type | status | decision | val_accuracy | delta vs incumbent | epochs | compute | hypothesis"]
    for h in history[-HISTORY_ROWS:]:
        delta = h.rule.get("delta")
        lines.append(f"{h.iteration} | {h.change_type} | {h.status} | {h.decision} | "
                     f"{f'{h.val_accuracy:.4f}' if h.val_accuracy is not None else '-'} | "
                     f"{f'{delta:+.4f}' if delta is not None else '-'} | "
                     f"{h.epochs if h.epochs is not None else '-'} | "
                     f"{describe(h.runs[0]) if h.runs else '-'} | {h.hypothesis}")
        if h.status != Status.OK:
            lines.append(f"    reason: {h.reason}")
            for tail in h.log_tail.splitlines()[-6:]:
                lines.append(f"    | {tail}")
    return "\n".join(lines)


def hardware_text(hw: dict[str, Any]) -> str:
    per_epoch = hw.get("incumbent_seconds_per_epoch")
    threads = hw.get("cpu_threads")
    clock = (f" of CPU time on {threads} allotted cores (torch gets {threads} threads; a busy machine does not "
             f"shorten it, and more threads only spend it faster)" if threads else " of wall time, the device to itself")
    return (f"Hardware: device {hw.get('device')}; training budget {hw.get('budget_s')} s{clock} per candidate. "
            f"The incumbent completed {hw.get('incumbent_epochs')} epochs"
            + (f" at {per_epoch:.2f} s per epoch." if per_epoch else "."))


def stable_context(ctx: ProposalContext) -> str:
    return (f"## Current research strategy (program.md)\n\n{ctx.strategy}\n\n"
            f"## Incumbent train.py (the best so far)\n\n```python\n{ctx.incumbent_code}\n```")


def propose_task(ctx: ProposalContext) -> str:
    return (f"{hardware_text(ctx.hardware)}\n\n## History (oldest first)\n\n{history_text(ctx.history)}\n\n"
            f"## Task\n\nPropose iteration {ctx.iteration}: one change most likely to raise validation accuracy "
            "within the budget. Call propose_train_py.")


def fix_task(candidate: Proposal, error: str, log_tail: str) -> str:
    return (f"Your candidate for this iteration ({candidate.hypothesis}) failed a short pre-flight run on a small "
            f"subset, before any budget was spent: {error}\n\nIts train.py:\n```python\n{candidate.code}\n```\n\n"
            f"Last lines of its output (the traceback):\n```\n{log_tail}\n```\n\n"
            "Fix it so that it runs, keeping the same idea. Call propose_train_py with the whole corrected train.py, "
            "or with edits to the failed candidate.")


def revise_task(ctx: ProposalContext) -> str:
    return (f"{hardware_text(ctx.hardware)}\n\n## History (oldest first)\n\n{history_text(ctx.history)}\n\n"
            "## Task\n\nRewrite the research strategy from these results: what to try next, what to stop trying, "
            "and lessons learned (for example 'normalisation changes need more epochs to show their value'). "
            "Call revise_strategy.")


class LLMProposer:
    """Shared logic; subclasses implement _send (one request) and _reask (continue after a bad answer)."""

    name = "llm"
    model = ""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.max_cost_left: float | None = None

    # --- provider hooks ---------------------------------------------------------

    def _send(self, stable: str, task: str, tool: dict[str, Any], history: list[Any]) -> ToolAnswer:
        raise NotImplementedError

    def _reask(self, answer: ToolAnswer, error: str) -> list[Any]:
        """Conversation turns that show the model its bad answer and the error."""
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------

    def _call(self, purpose: str, stable: str, task: str, tool: dict[str, Any], turns: list[Any]) -> ToolAnswer:
        prompt_chars = len(ROLE_AND_RULES) + len(PREPARE_CONTRACT) + len(stable) + len(task) + sum(len(str(t)) for t in turns)
        spent = sum(c["cost_usd"] for c in self.calls)
        if self.max_cost_left is not None and spent + worst_case_cost_usd(prompt_chars, MAX_OUTPUT_TOKENS, self.model) > self.max_cost_left:
            raise SpendingCapReached(f"the next {purpose} call could pass the spending cap "
                                     f"(${self.max_cost_left - spent:.4f} left)")
        started = time.monotonic()
        answer = self._send(stable, task, tool, turns)
        self.calls.append({"purpose": purpose, "model": self.model, "input_tokens": answer.usage.input_tokens,
                           "output_tokens": answer.usage.output_tokens,
                           "cache_write_tokens": answer.usage.cache_write_tokens,
                           "cache_read_tokens": answer.usage.cache_read_tokens,
                           "cost_usd": cost_usd(answer.usage, self.model), "latency_s": time.monotonic() - started})
        return answer

    def _ask_for_proposal(self, ctx: ProposalContext, purpose: str, task: str, base_code: str) -> Proposal:
        """One answer and, if it is invalid, one re-ask; then a failed proposal (error set)."""
        self.max_cost_left = ctx.max_cost_left
        stable = stable_context(ctx)
        turns: list[Any] = []
        error = ""
        for attempt in range(2):
            answer = self._call(purpose if attempt == 0 else f"{purpose}-reask", stable, task, PROPOSE_TOOL, turns)
            try:
                if answer.error:
                    raise InvalidProposal(answer.error)
                proposal = proposal_from(answer.data, base_code)
                proposal.calls = self.calls
                return proposal
            except InvalidProposal as exc:
                error = str(exc)
                turns = turns + self._reask(answer, error)
        return Proposal(hypothesis=answer.data.get("hypothesis", "") if isinstance(answer.data, dict) else "",
                        change_type=ChangeType.UNKNOWN, code=ctx.incumbent_code, error=f"invalid proposal after one re-ask: {error}",
                        calls=self.calls)

    def propose(self, ctx: ProposalContext) -> Proposal:
        return self._ask_for_proposal(ctx, "propose", propose_task(ctx), ctx.incumbent_code)

    def fix(self, ctx: ProposalContext, candidate: Proposal, error: str, log_tail: str) -> Proposal:
        return self._ask_for_proposal(ctx, "fix", fix_task(candidate, error, log_tail), candidate.code)

    def revise_strategy(self, ctx: ProposalContext) -> tuple[str, str]:
        """A new Strategy section and lessons; one re-ask, then the strategy stays as it is."""
        self.max_cost_left = ctx.max_cost_left
        turns: list[Any] = []
        for attempt in range(2):
            answer = self._call("revise" if attempt == 0 else "revise-reask", stable_context(ctx), revise_task(ctx),
                                REVISE_TOOL, turns)
            data = answer.data or {}
            if isinstance(data.get("strategy"), str) and data["strategy"].strip():
                return data["strategy"].strip(), str(data.get("lessons", "")).strip()
            turns = turns + self._reask(answer, "revise_strategy needs a non-empty 'strategy' string")
        return ctx.strategy, "strategy revision failed: no valid answer; the strategy is unchanged"
