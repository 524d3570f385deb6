"""
The kill logic: when a sandboxed process must die, and why.

The clock is the orchestrator's, never the candidate's:

    launch ──start-up allowance──> ──budget──> deadline ──grace──> SIGKILL

No candidate trains past its deadline (launch + start-up allowance + budget), and each gets `grace`
more to save its model. prepare.TrainingBudget is told the deadline and stops at an epoch boundary
before it (or after `budget` seconds, if that comes first); a candidate that ignores it, never prints
the budget marker, or trains during "start-up" gains at most the unused allowance and the grace: at
deadline + grace it is SIGKILLed and scored `timeout`, never `ok`. SIGKILL cannot be caught or deferred.

Resources are watched from outside at every poll: memory (the process tree's RSS, its private tmpfs
mounts, and memfds or deleted files it holds open) against the memory cap, and the bytes and entries
in its writable directory against the disk caps.
"""

from __future__ import annotations

from dataclasses import dataclass

BUDGET_MARKER = "budget_start:"


@dataclass
class Watchdog:
    launched: float
    startup_allowance_s: float
    budget_s: float
    grace_s: float
    memory_cap_bytes: int
    disk_cap_bytes: int
    max_files: int
    training_started: float | None = None
    peak_memory_bytes: int = 0
    peak_disk_bytes: int = 0

    def saw_line(self, line: str, now: float) -> None:
        if self.training_started is None and line.startswith(BUDGET_MARKER):
            self.training_started = now

    @property
    def deadline(self) -> float:
        return self.launched + self.startup_allowance_s + self.budget_s

    def kill_at(self) -> float:
        return self.deadline + self.grace_s

    def verdict(self, now: float, memory_bytes: int, disk_bytes: int = 0, files: int = 0) -> str | None:
        """'timeout', 'memory' or 'disk' if the process must be killed now, else None."""
        self.peak_memory_bytes = max(self.peak_memory_bytes, memory_bytes)
        self.peak_disk_bytes = max(self.peak_disk_bytes, disk_bytes)
        if now >= self.kill_at():
            return "timeout"
        if memory_bytes > self.memory_cap_bytes:
            return "memory"
        if disk_bytes > self.disk_cap_bytes or files > self.max_files:
            return "disk"
        return None

    def training_seconds(self, ended: float) -> float:
        """Seconds from the budget marker (or, without one, the end of the start-up allowance) to exit."""
        start = self.launched + self.startup_allowance_s
        if self.training_started is not None:
            start = min(start, self.training_started)
        return max(0.0, ended - start)
