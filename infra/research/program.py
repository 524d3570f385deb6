"""program.md: the research strategy in natural language. Only its Strategy section is ever rewritten."""

from __future__ import annotations

import re
from pathlib import Path

STRATEGY_HEADING = "## Strategy"
_SECTION = re.compile(r"(^## Strategy[ \t]*\n)(.*?)(?=^## |\Z)", re.DOTALL | re.MULTILINE)


class ProgramError(ValueError):
    """program.md is missing, unreadable or has no Strategy section."""


def read_program(path: Path) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProgramError(f"cannot read program file {path}: {exc}") from exc
    if not _SECTION.search(text):
        raise ProgramError(f"{path} has no '{STRATEGY_HEADING}' section")
    return text


def strategy_of(program: str) -> str:
    match = _SECTION.search(program)
    return match.group(2).strip() if match else ""


def with_strategy(program: str, strategy: str) -> str:
    """program with its Strategy section replaced; every other section untouched."""
    if not _SECTION.search(program):
        raise ProgramError(f"program has no '{STRATEGY_HEADING}' section")
    return _SECTION.sub(lambda m: m.group(1) + "\n" + strategy.strip() + "\n\n", program, count=1).rstrip() + "\n"
