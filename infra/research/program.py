"""
program.md: the research strategy in natural language. Only its Strategy section is ever rewritten.

The Strategy section runs from its `## Strategy` heading to the next level-1 or level-2 heading. A
strategy text is a proposer's words: a heading inside it would end the section early (and every resume
would then find the file and the store disagreeing, and add another copy), so its headings are demoted
to level 3 before it goes in (`neutral_headings`).
"""

from __future__ import annotations

import re
from pathlib import Path

STRATEGY_HEADING = "## Strategy"
_SECTION = re.compile(r"(^## Strategy[ \t]*\n)(.*?)(?=^#{1,2}(?:[ \t]|$)|\Z)", re.DOTALL | re.MULTILINE)
# an ATX heading of level 1 or 2 (up to three spaces of indentation, then one or two #, then a space or the end)
_SECTION_ENDING_HEADING = re.compile(r"^[ ]{0,3}#{1,2}(?=[ \t]|$)", re.MULTILINE)


class ProgramError(ValueError):
    """program.md is missing, unreadable or has no Strategy section."""


def parse_program(text: str, where: Path | str) -> str:
    """text, checked to be a program with a Strategy section (where: its path, for the message)."""
    if not _SECTION.search(text):
        raise ProgramError(f"{where} has no '{STRATEGY_HEADING}' section")
    return text


def read_program(path: Path) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProgramError(f"cannot read program file {path}: {exc}") from exc
    return parse_program(text, path)


def neutral_headings(strategy: str) -> str:
    """strategy with every heading that would end the Strategy section demoted to level 3."""
    return _SECTION_ENDING_HEADING.sub(lambda m: "###", strategy.replace("\r\n", "\n").replace("\r", "\n"))


def strategy_of(program: str) -> str:
    match = _SECTION.search(program)
    return match.group(2).strip() if match else ""


def with_strategy(program: str, strategy: str) -> str:
    """program with its Strategy section replaced; every other section untouched. strategy_of(the result) is
    neutral_headings(strategy).strip()."""
    if not _SECTION.search(program):
        raise ProgramError(f"program has no '{STRATEGY_HEADING}' section")
    text = neutral_headings(strategy).strip()
    return _SECTION.sub(lambda m: m.group(1) + "\n" + text + "\n\n", program, count=1).rstrip() + "\n"
