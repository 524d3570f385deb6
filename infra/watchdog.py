"""
The kill logic: when a sandboxed process must die, and why.

A candidate can ignore SIGTERM, never call the budget helper, or fork children
that setsid away; none of that defers SIGKILL sent from outside. The clock:

    launch ──startup allowance──> training starts ──budget──> ──grace──> SIGKILL

Training starts when the process prints the budget marker (prepare.TrainingBudget),
or when the start-up allowance runs out, whichever is first, so slow imports never
buy extra training time. Memory is watched over the whole process tree's RSS.
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
    training_started: float | None = None
    peak_rss_bytes: int = 0

    def saw_line(self, line: str, now: float) -> None:
        if self.training_started is None and line.startswith(BUDGET_MARKER):
            self.training_started = now

    def kill_at(self) -> float:
        """The moment of SIGKILL: budget + grace after training started, never later than the hard limit."""
        start = self.launched + self.startup_allowance_s
        if self.training_started is not None:
            start = min(start, self.training_started)
        return start + self.budget_s + self.grace_s

    def verdict(self, now: float, rss_bytes: int) -> str | None:
        """'timeout' or 'memory' if the process must be killed now, else None."""
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss_bytes)
        if now >= self.kill_at():
            return "timeout"
        if rss_bytes > self.memory_cap_bytes:
            return "memory"
        return None

    def training_seconds(self, ended: float) -> float | None:
        """Wall seconds from the budget marker to exit, measured outside the candidate."""
        return None if self.training_started is None else ended - self.training_started
