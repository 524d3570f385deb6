"""
One intake for everything a proposer returns, whatever the proposer (offline, replay, a language model):
a prompt-injected model, a broken server or a replay file writes every byte of it, so nothing of it is
stored, committed, printed, shown or trained before it passes here (tasks/propose.py and
tasks/revise_strategy.py call it on every answer).

    code             text (UTF-8, no NUL) of at most MAX_CODE_BYTES bytes, measured before any parsing; its
                     change type measured on it against the incumbent (infra/research/code_edit.py)
    hypothesis, expected_effect, an error
                     one line each: escape sequences and control characters removed, at most so many
                     characters (cut, with an ellipsis)
    strategy, lessons
                     lines: the same, line breaks and tabs kept; the strategy's headings neutralised, so it
                     cannot end its own section of program.md (infra/research/program.py)
    memory           a JSON object of at most MAX_MEMORY_BYTES

A value of the wrong type (a number where text belongs, a change type that is not one, memory that is not
JSON) or code over the cap refuses the whole proposal: it comes back with `error` set and the incumbent's
code, is recorded as an invalid iteration, and the loop goes on. Text over its cap is cut, not refused.
"""

from __future__ import annotations

import json
from typing import Any

from infra.display import without_controls
from infra.proposers.base import Proposal, Revision
from infra.records import ChangeType
from infra.research.code_edit import MAX_CODE_BYTES, classify_change
from infra.research.program import neutral_headings

MAX_HYPOTHESIS_CHARS = 1_000
MAX_EXPECTED_EFFECT_CHARS = 500
MAX_ERROR_CHARS = 1_000
MAX_STRATEGY_CHARS = 8_000
MAX_LESSONS_CHARS = 4_000
MAX_MEMORY_BYTES = 4_096


class Refused(ValueError):
    """A proposer's answer that cannot be used; the message says which field and why."""


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def text(value: Any, field: str, limit: int, multiline: bool = False) -> str:
    """A proposer's text, cleaned and capped (None counts as empty); Refused if it is not text."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Refused(f"{field} must be text, got {type(value).__name__}")
    return _cut(without_controls(value, multiline).strip(), limit)


def code(value: Any) -> str:
    """A proposer's train.py: text, encodable, without NUL, at most MAX_CODE_BYTES (counted before any parsing)."""
    if not isinstance(value, str):
        raise Refused(f"the code must be text, got {type(value).__name__}")
    if len(value) > MAX_CODE_BYTES:  # a character is at least one byte: no need to encode a huge text to know
        raise Refused(f"train.py is larger than {MAX_CODE_BYTES // 1024} KiB")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise Refused("train.py is not valid text (unpaired surrogates)") from None
    if size > MAX_CODE_BYTES:
        raise Refused(f"train.py is larger than {MAX_CODE_BYTES // 1024} KiB")
    if "\0" in value:
        raise Refused("train.py holds a NUL character")
    return value


def memory(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Refused(f"memory must be a JSON object, got {type(value).__name__}")
    try:
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise Refused(f"memory is not JSON: {exc}") from None
    if len(encoded.encode("utf-8", errors="replace")) > MAX_MEMORY_BYTES:
        raise Refused(f"memory is larger than {MAX_MEMORY_BYTES} bytes")
    return json.loads(encoded)


def change_type(label: Any, incumbent: str, new_code: str) -> ChangeType:
    """Measured on the code against the incumbent; the proposer's label only where the code says NONE (comments or
    layout alone) and the label is a change type."""
    measured = classify_change(incumbent, new_code)
    if measured != ChangeType.NONE:
        return measured
    try:
        return ChangeType(label)
    except ValueError:
        return ChangeType.NONE


def accept_proposal(proposal: Any, incumbent: str) -> Proposal | None:
    """The proposal as it may be used, or (refused) a failed one with the reason; None (nothing more to propose)
    passes through."""
    if proposal is None:
        return None
    if not isinstance(proposal, Proposal):
        return _refused(None, incumbent, f"the proposer returned a {type(proposal).__name__}, not a proposal")
    try:
        error = text(proposal.error, "error", MAX_ERROR_CHARS)
        hypothesis = text(proposal.hypothesis, "hypothesis", MAX_HYPOTHESIS_CHARS)
        expected = text(proposal.expected_effect, "expected_effect", MAX_EXPECTED_EFFECT_CHARS)
        if error:  # a failed proposal: its code is never trained, and the incumbent's stands in for it
            return Proposal(
                hypothesis=hypothesis,
                change_type=ChangeType.UNKNOWN,
                code=incumbent,
                expected_effect=expected,
                error=error,
                calls=proposal.calls,
            )
        new_code = code(proposal.code)
        return Proposal(
            hypothesis=hypothesis,
            change_type=change_type(proposal.change_type, incumbent, new_code),
            code=new_code,
            expected_effect=expected,
            memory=memory(proposal.memory),
            calls=proposal.calls,
        )
    except Refused as exc:
        return _refused(proposal, incumbent, str(exc))


def _refused(proposal: Proposal | None, incumbent: str, why: str) -> Proposal:
    try:
        hypothesis = text(getattr(proposal, "hypothesis", ""), "hypothesis", MAX_HYPOTHESIS_CHARS)
    except Refused:
        hypothesis = ""
    calls = proposal.calls if isinstance(proposal, Proposal) and isinstance(proposal.calls, list) else []
    return Proposal(
        hypothesis=hypothesis,
        change_type=ChangeType.UNKNOWN,
        code=incumbent,
        error=f"proposal refused: {_cut(why, MAX_ERROR_CHARS)}",
        calls=calls,
    )


def accept_revision(revision: Any, current: str) -> Revision:
    """The revision as it may be used; refused, the current strategy stays, and the lessons say why."""
    calls = revision.calls if isinstance(revision, Revision) and isinstance(revision.calls, list) else []
    try:
        if not isinstance(revision, Revision):
            raise Refused(f"the proposer returned a {type(revision).__name__}, not a revision")
        strategy = neutral_headings(text(revision.strategy, "strategy", MAX_STRATEGY_CHARS, multiline=True))
        lessons = text(revision.lessons, "lessons", MAX_LESSONS_CHARS, multiline=True)
        if not strategy:
            raise Refused("the strategy is empty")
        return Revision(strategy, lessons, calls)
    except Refused as exc:
        return Revision(current, f"strategy revision refused: {exc}; the strategy is unchanged", calls)
