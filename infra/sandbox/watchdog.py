"""
The kill logic: when a sandboxed process must die, and why.

The clock is the orchestrator's, never the candidate's. On a GPU (each candidate has the device to
itself) it is the wall clock:

    launch ──start-up allowance──> ──budget──> deadline ──export allowance──> SIGKILL

On a CPU the wall clock would measure the machine's load, not the candidate (a busy neighbour halves
its epochs), so the clock is the CPU time of the run's whole process tree, given N allotted cores
(cpu_threads): the budget means budget x N CPU seconds, whatever else runs on the machine. The two
allowances are measured (infra/sandbox/allowances.py) as CPU seconds of the whole run, so they are not
multiplied by N.

    CPU time:  0 ──start-up allowance──> ──budget x N──> deadline ──export allowance──> SIGKILL
    wall time: launch ─────────── WALL_CEILING x (allowances + budget) ──> SIGKILL

The wall ceiling bounds a run that gets no CPU at all (a machine too busy, or a candidate that
sleeps); a run it stops while the rest of the machine left it too few free cores is `contended`
(infra/sandbox/compute_record.py), and measured again rather than compared.

No candidate trains past its deadline: after it, a run has only the export allowance, the time
prepare.save_model needs for a reference model, to save and exit. prepare.TrainingBudget is told the
deadline and stops at an epoch boundary before it (or after `budget` seconds, if that comes first); a
candidate that ignores it, never prints the budget marker, or trains during "start-up" gains at most the
unused part of the two allowances: at deadline + export allowance it is SIGKILLed and scored `timeout`,
never `ok`. SIGKILL cannot be caught or deferred.

A job names a marker line (SandboxJob.marker): training's is the budget marker prepare.TrainingBudget
prints, an evaluation's the line prepare.py prints before it runs the model. The run's clock is read when
the marker is seen, so what came after it (training, or inference) is measured from outside.

Resources are watched from outside at every poll: memory (the process tree's RSS, its private tmpfs
mounts, and memfds or deleted files it holds open) against the memory cap, and the bytes and entries
in its writable directory against the disk caps.
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.settings import Limits
from prepare import BUDGET_MARKER

WALL_CEILING = 4.0  # on a CPU clock: wall seconds allowed per second of allowances + budget


@dataclass
class Watchdog:
    launched: float
    limits: Limits
    cpu_clock: bool = False  # the budget is CPU time of limits.cpu_threads cores; else the wall clock
    marker: str = BUDGET_MARKER  # the line that starts the measured part of the run
    marker_seen_at: float | None = None  # wall clock, when the marker line was read
    cpu_seconds: float = 0.0  # the most CPU time the run's tree was seen to have used
    run_delay_seconds: float = 0.0  # the most time it was seen waiting for a CPU
    cpu_at_marker: float | None = None  # the tree's CPU time read when the marker was seen
    peak_memory_bytes: int = 0
    peak_disk_bytes: int = 0

    @property
    def cpu_threads(self) -> int:
        return self.limits.cpu_threads if self.cpu_clock else 0

    def saw_line(self, line: str, now: float) -> bool:
        """True the first time the marker is seen: the caller then reads the run's CPU time (saw_marker_cpu)."""
        if self.marker_seen_at is None and line.startswith(self.marker):
            self.marker_seen_at = now
            return True
        return False

    def saw_marker_cpu(self, cpu_seconds: float) -> None:
        """The tree's CPU time, read as soon as the marker was seen (the first reading stands)."""
        if self.cpu_at_marker is None:
            self.cpu_at_marker = cpu_seconds

    def saw_cpu(self, cpu_seconds: float, run_delay_seconds: float = 0.0) -> None:
        """The tree's CPU time and run delay, read now (readings only ever raise them: a reaped child can
        hide for a moment)."""
        self.cpu_seconds = max(self.cpu_seconds, cpu_seconds)
        self.run_delay_seconds = max(self.run_delay_seconds, run_delay_seconds)

    @property
    def deadline(self) -> float:
        """Wall clock: launch + allowance + budget. CPU clock: CPU seconds by which training must be over."""
        if self.cpu_clock:
            return self.limits.startup_allowance_s + self.limits.budget_s * self.cpu_threads
        return self.launched + self.limits.startup_allowance_s + self.limits.budget_s

    def deadline_on_budget_clock(self) -> float:
        """The deadline as prepare.budget_clock() reads it inside the sandbox (CPU seconds per allotted core)."""
        return self.deadline / self.cpu_threads if self.cpu_clock else self.deadline

    def cpu_limit(self) -> float:
        """CPU clock: CPU seconds after which the run is SIGKILLed (deadline + export allowance)."""
        return self.deadline + self.limits.export_allowance_s

    def kill_at(self) -> float:
        """The wall-clock moment of the SIGKILL: deadline + export allowance, or on a CPU clock the wall ceiling."""
        if self.cpu_clock:
            limits = self.limits
            return self.launched + WALL_CEILING * (
                limits.startup_allowance_s + limits.budget_s + limits.export_allowance_s
            )
        return self.deadline + self.limits.export_allowance_s

    def out_of_time(self, now: float) -> bool:
        return now >= self.kill_at() or (self.cpu_clock and self.cpu_seconds > self.cpu_limit())

    def verdict(self, now: float, memory_bytes: int, disk_bytes: int = 0, files: int = 0) -> str | None:
        """'timeout', 'memory' or 'disk' if the process must be killed now, else None."""
        self.peak_memory_bytes = max(self.peak_memory_bytes, memory_bytes)
        self.peak_disk_bytes = max(self.peak_disk_bytes, disk_bytes)
        if self.out_of_time(now):
            return "timeout"
        if memory_bytes > self.limits.memory_cap_bytes:
            return "memory"
        if disk_bytes > self.limits.disk_cap_bytes or files > self.limits.max_files:
            return "disk"
        return None

    def clock_at_marker(self) -> float | None:
        """The run's clock when its marker was seen (CPU seconds of the tree, or wall seconds since launch), in
        total, not per core; None if it never printed the marker."""
        if self.cpu_clock:
            return self.cpu_at_marker
        return None if self.marker_seen_at is None else self.marker_seen_at - self.launched

    def clock_total(self, ended: float) -> float:
        """The run's clock at its end, in the unit of clock_at_marker."""
        return self.cpu_seconds if self.cpu_clock else ended - self.launched

    def training_seconds(self, ended: float) -> float:
        """Seconds of training: from the budget marker (or, without one, the end of the start-up allowance)
        to exit; on a CPU clock in CPU seconds per allotted core, the unit of the budget."""
        if self.cpu_clock:
            start = self.limits.startup_allowance_s
            if self.cpu_at_marker is not None:
                start = min(start, self.cpu_at_marker)
            return max(0.0, self.cpu_seconds - start) / self.cpu_threads
        start = self.launched + self.limits.startup_allowance_s
        if self.marker_seen_at is not None:
            start = min(start, self.marker_seen_at)
        return max(0.0, ended - start)
