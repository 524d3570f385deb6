"""
The two tools a language model answers through (propose_train_py, revise_strategy) and the checks its answer passes
before it can become a candidate: every required field, edits that apply exactly once, Python that compiles, a real
change, and a change type measured from the code (not taken from the label).
"""

from __future__ import annotations

from typing import Any

from infra.proposers.base import Proposal
from infra.records import ChangeType
from infra.research.code_edit import MAX_CODE_BYTES, classify_change, syntax_error

PROPOSE_TOOL = {
    "name": "propose_train_py",
    "description": "Propose the next candidate train.py.",
    "input_schema": {
        "type": "object",
        "properties": {
            "hypothesis": {
                "type": "string",
                "description": "what you change and why it should raise validation accuracy",
            },
            "change_type": {"type": "string", "enum": ["parametric", "structural"]},
            "expected_effect": {"type": "string", "description": "expected change in validation accuracy and epochs"},
            "train_py": {"type": "string", "description": "the whole new train.py (or use edits)"},
            "edits": {
                "type": "array",
                "description": "exact search/replace edits to the incumbent (to the failed candidate when fixing one); "
                "each search must occur exactly once",
                "items": {
                    "type": "object",
                    "properties": {"search": {"type": "string"}, "replace": {"type": "string"}},
                    "required": ["search", "replace"],
                },
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

# Sent on every call, in this order, so that propose, fix and revise share one cached prefix.
TOOLS = [PROPOSE_TOOL, REVISE_TOOL]


class InvalidProposal(ValueError):
    """A tool answer that cannot become a runnable train.py."""


def missing_fields(data: Any, tool: dict[str, Any]) -> list[str]:
    """The fields the tool's schema requires that the answer lacks, leaves empty or gives as something other than
    text (the schema is the one list); all of them when the answer is not an object."""
    required = tool["input_schema"]["required"]
    if not isinstance(data, dict):
        return list(required)
    return [key for key in required if not isinstance(data.get(key), str) or not data[key].strip()]


def apply_edits(code: str, edits: list[Any]) -> str:
    """The edits applied in order; InvalidProposal for an edit that is not {search: text, replace: text} or whose
    search text does not occur exactly once (a model's answer is checked for type, never trusted to have one)."""
    for n, edit in enumerate(edits, 1):
        if (
            not isinstance(edit, dict)
            or not isinstance(edit.get("search"), str)
            or not isinstance(edit.get("replace", ""), str)
        ):
            raise InvalidProposal(f"edit {n} must be an object with text fields 'search' and 'replace'")
        search, replace = edit["search"], edit.get("replace", "")
        count = code.count(search) if search else 0
        if count != 1:
            raise InvalidProposal(
                f"edit {n}: its search text occurs {count} times in the code it edits; it must occur exactly once"
            )
        code = code.replace(search, replace, 1)
    return code


def proposal_from(data: dict[str, Any] | None, incumbent: str, edit_base: str | None = None) -> Proposal:
    """Validate a tool answer; InvalidProposal says what is wrong, for the re-ask.
    Edits apply to edit_base (a crashed candidate being fixed; the incumbent by default); the change
    type is always measured against the incumbent, the code the candidate will be compared with."""
    edit_base = incumbent if edit_base is None else edit_base
    if not data:
        raise InvalidProposal("no propose_train_py tool call in the answer")
    if not isinstance(data, dict):
        raise InvalidProposal(f"the propose_train_py input must be an object, got {type(data).__name__}")
    missing = missing_fields(data, PROPOSE_TOOL)
    if missing:
        raise InvalidProposal(
            f"missing or empty field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"
        )
    if data["change_type"] not in ("parametric", "structural"):
        raise InvalidProposal(f"change_type must be 'parametric' or 'structural', got {data['change_type']!r}")
    if isinstance(data.get("train_py"), str) and data["train_py"].strip():
        code = data["train_py"]
        if len(code) > MAX_CODE_BYTES:  # before anything parses it
            raise InvalidProposal(f"the new train.py is larger than {MAX_CODE_BYTES // 1024} KiB")
    elif isinstance(data.get("edits"), list) and data["edits"]:
        code = apply_edits(edit_base, data["edits"])
    else:
        raise InvalidProposal("give either train_py (the whole file) or a non-empty list of edits")
    problem = syntax_error(code)
    if problem:
        raise InvalidProposal(f"the new train.py is not valid Python: {problem}")
    if code == incumbent:
        raise InvalidProposal("the new train.py is identical to the incumbent")
    if code == edit_base:
        raise InvalidProposal("the new train.py is identical to the failed candidate; it would crash again")
    measured = classify_change(incumbent, code)  # trust the AST over the model's label
    return Proposal(
        hypothesis=data["hypothesis"].strip(),
        change_type=measured if measured != ChangeType.NONE else ChangeType(data["change_type"]),
        code=code,
        expected_effect=data["expected_effect"].strip(),
    )
