"""
Text a proposer or a candidate wrote, made safe to show: on a terminal, in Prefect's markdown and table
artifacts, in an HTML page.

Such text is an adversary's: a prompt-injected model writes every byte of a proposal, a candidate every
byte of its output. On a terminal it could clear the screen, set the window title, plant OSC 8 links or
OSC 52 clipboard writes, colour a fake "KEPT 0.99" line, or reorder what is shown with bidirectional
overrides; in a UI that renders markdown it could be a `javascript:` link or a remote image (fetched with
the UI's address as Referer). Everything of theirs that is shown goes through one of these:

    terminal(text)      escape sequences removed, other control characters (bidi overrides included) shown
                        as '?'; line breaks and tabs kept only where asked (multiline)
    code_span(text)     one line of free text as a markdown code span: shown verbatim, never rendered
    code_block(text)    many lines as a fenced block whose fence no line inside can close
    table_cell(text)    one bounded line for a table artifact's cell, as a code span (the UI renders cells as
                        markdown too)

HTML pages escape with the standard library's html.escape (infra/report_html.py).
"""

from __future__ import annotations

import re

_ESCAPE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
# C0 and C1 controls (not tab), DEL, line and paragraph separators, bidirectional marks, embeddings,
# overrides and isolates
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]")
_CONTROL_BUT_NEWLINE = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]"
)
TABLE_CELL_CHARS = 300


def terminal(text: str, multiline: bool = False) -> str:
    """Printable text: escape sequences removed, other control characters shown as '?' (line breaks kept if
    multiline; a carriage return never: it would let a line overwrite the one before)."""
    text = _ESCAPE.sub("", str(text))
    if multiline:
        return _CONTROL_BUT_NEWLINE.sub("?", text.replace("\r\n", "\n"))
    return _CONTROL.sub("?", text)


def without_controls(text: str, multiline: bool = False) -> str:
    """text with escape sequences and control characters removed (line breaks and tabs kept if multiline): how a
    proposer's text is stored (infra/proposers/intake.py)."""
    text = _ESCAPE.sub("", text.replace("\r\n", "\n"))
    if multiline:
        return _CONTROL_BUT_NEWLINE.sub("", text)
    return _CONTROL.sub("", text.replace("\n", " ").replace("\t", " "))


def one_line(text: str) -> str:
    """terminal(text) with its line breaks and tabs as single spaces."""
    return " ".join(terminal(str(text).replace("\r", " ").replace("\n", " ").replace("\t", " ")).split())


def _longest_run(text: str, char: str = "`") -> int:
    return max((len(m) for m in re.findall(f"{re.escape(char)}+", text)), default=0)


def code_span(text: str) -> str:
    """One line of free text as a markdown code span (CommonMark: a longer backtick run than any inside)."""
    line = one_line(text)
    fence = "`" * (_longest_run(line) + 1)
    pad = " " if not line or line.startswith("`") or line.endswith("`") else ""
    return f"{fence}{pad}{line}{pad}{fence}"


def code_block(text: str, info: str = "text") -> str:
    """Lines as a fenced markdown block: its fence is longer than any backtick run inside, so none closes it."""
    body = terminal(text, multiline=True)
    fence = "`" * max(3, _longest_run(body) + 1)
    return f"{fence}{info}\n{body}\n{fence}"


def table_cell(value: object) -> object:
    """A table artifact's cell: numbers as they are, text as one bounded, cleaned line in a code span (Prefect's UI
    renders every cell as markdown: a link or an image in one would be live; seen in headless Chromium)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    line = one_line(str(value))
    return code_span(line if len(line) <= TABLE_CELL_CHARS else line[: TABLE_CELL_CHARS - 1] + "…")
