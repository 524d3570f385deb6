"""
A candidate's output is data, with bounds: it can neither grow the orchestrator nor fill the disk.

Lines are cut at MAX_LINE_CHARS (the rest of the line is read and dropped without being stored);
control characters and terminal escapes are replaced, so nothing printed can move a researcher's
cursor. The log file keeps the first HEAD_BYTES and the last TAIL_BYTES of the output, with one line
that says how much was cut between them; only those lines reach the live log (`on_line`), and each
costs at least MIN_LINE_COST, so a flood of empty lines cannot become a flood of log records (nor slow
the candidate that waits on its pipe). Memory held: one line plus the tail.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from infra.display import terminal

MAX_LINE_CHARS = 2000
HEAD_BYTES = 256 * 1024
TAIL_BYTES = 64 * 1024
MIN_LINE_COST = 64  # bytes each line costs against the head: at most 4,096 lines go line by line to the live log
_READ_CHUNK = 64 * 1024


def clean(text: str) -> str:
    """Printable text: terminal escape sequences removed, other control characters shown as '?' (infra/display.py)."""
    return terminal(text)


def read_lines(pipe: BinaryIO) -> Iterator[str]:
    """Lines from a pipe, each at most MAX_LINE_CHARS (plus a note of what was cut), never more in memory."""
    limit = MAX_LINE_CHARS * 4  # bytes: a UTF-8 character is at most 4
    while True:
        raw = pipe.readline(limit)
        if not raw:
            return
        dropped = 0
        while not raw.endswith(b"\n"):  # an overlong line: drain it up to its newline
            more = pipe.readline(_READ_CHUNK)
            if not more:
                break
            dropped += len(more)
            if more.endswith(b"\n"):
                dropped -= 1
                break
        line = clean(raw.rstrip(b"\n").decode("utf-8", errors="replace").rstrip("\r"))
        if len(line) > MAX_LINE_CHARS:
            dropped += len(line) - MAX_LINE_CHARS
            line = line[:MAX_LINE_CHARS]
        yield f"{line} [... line cut: {dropped} more bytes]" if dropped else line


class BoundedLog:
    """The log file of one sandboxed process: head, a cut marker, and tail."""

    def __init__(
        self,
        path: Path,
        on_line: Callable[[str], None] | None = None,
        head_bytes: int = HEAD_BYTES,
        tail_bytes: int = TAIL_BYTES,
    ):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        self.file = os.fdopen(fd, "w", encoding="utf-8")
        self.on_line = on_line
        self.head_left = head_bytes
        self.tail_bytes = tail_bytes

    def _emit(self, line: str) -> None:
        self.file.write(line + "\n")
        self.file.flush()
        if self.on_line is not None:
            self.on_line(line)

    def consume(self, pipe: BinaryIO, saw_line: Callable[[str], None]) -> None:
        """Read the pipe to its end: the head line by line (each seen by saw_line), then only a byte
        ring of the tail, so that a flood costs a memmove per megabyte, not Python work per line."""
        try:
            for line in read_lines(pipe):
                saw_line(line)
                self._emit(line)
                self.head_left -= max(MIN_LINE_COST, len(line.encode("utf-8", errors="replace")) + 1)
                if self.head_left <= 0:
                    self._consume_tail(pipe)
                    return
        except (ValueError, OSError):  # the pipe was closed under us: keep what was read
            self._emit("[... output cut: the reader was stopped before the end ...]")
        finally:
            self.file.close()

    def _consume_tail(self, pipe: BinaryIO) -> None:
        tail, cut_bytes, cut_lines = bytearray(), 0, 0
        while chunk := pipe.read1(_READ_CHUNK * 16):
            tail += chunk
            excess = len(tail) - self.tail_bytes
            if excess > 0:
                cut_lines += tail.count(b"\n", 0, excess)
                cut_bytes += excess
                del tail[:excess]
        lines = bytes(tail).split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        if cut_bytes and lines:  # the first kept line began before the cut
            cut_bytes += len(lines.pop(0))
        keep = self.tail_bytes // MIN_LINE_COST  # lines cost at least MIN_LINE_COST here too
        if len(lines) > keep:
            cut_lines += len(lines) - keep
            cut_bytes += sum(len(line) + 1 for line in lines[:-keep])
            lines = lines[-keep:]
        if cut_bytes:
            self._emit(f"[... output cut: about {cut_lines} lines, {cut_bytes} bytes omitted here ...]")
        for raw in lines:
            line = clean(raw.decode("utf-8", errors="replace").rstrip("\r"))
            self._emit(
                line
                if len(line) <= MAX_LINE_CHARS
                else f"{line[:MAX_LINE_CHARS]} [... line cut: {len(line) - MAX_LINE_CHARS} more characters]"
            )
