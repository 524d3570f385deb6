"""
What compute a run received, and whether its score can be compared with the others'.

Every training run stores this record with its iteration, so a researcher (and the proposer) can see
the load a number was measured under:

    clock          cpu (the budget is CPU time of the allotted cores) or wall (a GPU run)
    threads        the allotted cores (torch threads) on a CPU clock
    cpu_seconds    CPU time of the run's whole process tree
    wall_seconds   launch to exit
    core_share     cpu_seconds / (wall_seconds x threads): 1.0 is every allotted core, all the time
    waiting_share  the most time one of its processes was ready to compute but waited for a CPU, per wall
                   second (schedstat run delay; a run can raise it by making its processes wait for each other)
    free_cores     the cores the rest of the machine left it, on average: all cores (in a measurement slot, the
                   slot's own cores: the experiment's other slots are not foreign load) minus what every other
                   process (and the kernel) used on them while it ran (/proc/stat minus its own CPU time)
    load_start, load_end   the host's 1-minute load average at launch and at exit

A run is `contended` when the clock could not make up for the machine's load, judged from outside the
run: the rest of the machine left it less than CONTENDED_FREE_SHARE of the cores it needed (its
allotted cores; one on a wall clock) and, on a CPU clock, the wall ceiling stopped it before it had used
its CPU budget, and it spent that time waiting for a CPU. A candidate cannot fake that: its own
processes count as its own, not as the machine's. A contended measurement is run again
(flows/research.py), never compared as if it were equal.

Why the waiting: a run that sleeps on a busy machine also meets the wall ceiling with too few free
cores, but the load did not keep it from computing; judged contended, it was run twice more (up to
2 x 9 minutes at a 120 s budget) under a false reason. The wall ceiling's arithmetic sets the bar: the
ceiling (infra/sandbox/watchdog.py) comes after WALL_CEILING x (allowances + budget) of wall
time, and the run may use at most (allowances + budget) of CPU time per allotted core, so a run
the ceiling stops did not compute for at least 1 - 1/WALL_CEILING of its wall time (3/4). Kept from a
CPU by the load, it spent that time waiting: a waiting_share near 3/4. Asleep or blocked, it did not:
near 0. CONTENDED_WAITING_SHARE is half of 1 - 1/WALL_CEILING (0.375): contended only if it waited for
a CPU for at least half of the time it did not compute. The waiting is the run's own number, which it
can raise (processes that queue behind each other), so it can only take a contended verdict away,
never give one: the free cores are still judged from outside. It is the largest single process's
waiting (infra/sandbox/process_tree.py), so processes of one run that queue behind each other do not add up.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass
from typing import Any

from infra.sandbox.watchdog import WALL_CEILING

CONTENDED_FREE_SHARE = 0.75
CONTENDED_WAITING_SHARE = (1 - 1 / WALL_CEILING) / 2  # 0.375: see "Why the waiting" above


def host_load() -> float:
    return round(os.getloadavg()[0], 2)


@dataclass(frozen=True)
class ComputeRecord:
    """What compute one run received (the module's docstring says what each field means)."""

    clock: str
    threads: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    core_share: float = 0.0
    waiting_share: float = 0.0
    free_cores: float | None = None  # None: stored before the free cores were measured
    load_start: float = 0.0
    load_end: float = 0.0
    contended: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_stored(cls, stored: dict[str, Any] | None) -> ComputeRecord | None:
        """Back from the store's JSON; None for a run that never reached training. A record stored by an older
        version may lack later fields (their defaults) or hold ones since dropped (ignored)."""
        if not stored or "clock" not in stored:
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in stored.items() if key in known})


def compute_record(
    threads: int,
    cpu_seconds: float,
    wall_seconds: float,
    run_delay_seconds: float,
    others_busy_seconds: float,
    cores: int,
    load_start: float,
    load_end: float,
    stopped_by_wall_ceiling: bool,
) -> ComputeRecord:
    wall = max(wall_seconds, 1e-9)
    free_cores = max(0.0, cores - max(0.0, others_busy_seconds) / wall)
    starved = free_cores < CONTENDED_FREE_SHARE * (threads or 1)
    waited = run_delay_seconds / wall > CONTENDED_WAITING_SHARE
    contended = starved and (not threads or (stopped_by_wall_ceiling and waited))
    return ComputeRecord(
        clock="cpu" if threads else "wall",
        threads=threads,
        cpu_seconds=round(cpu_seconds, 2),
        wall_seconds=round(wall_seconds, 2),
        core_share=round(cpu_seconds / (wall * threads), 3) if threads else 0.0,
        waiting_share=round(run_delay_seconds / wall, 3),
        free_cores=round(free_cores, 2),
        load_start=load_start,
        load_end=load_end,
        contended=contended,
    )


def describe(compute: ComputeRecord | None) -> str:
    """One line for logs, the CLI and the prompt: what the run got ("" for a run that never reached training)."""
    if compute is None:
        return ""
    if compute.clock == "cpu":
        got = (
            f"{compute.cpu_seconds:.1f} CPU s in {compute.wall_seconds:.1f} s wall, "
            f"{compute.core_share:.0%} of {compute.threads} cores"
        )
    else:
        got = f"{compute.wall_seconds:.1f} s wall"
    flag = ", CONTENDED" if compute.contended else ""
    free = f", {compute.free_cores:.1f} cores left free" if compute.free_cores is not None else ""
    load = f"load {compute.load_start:.1f}->{compute.load_end:.1f}"
    return f"{got}, waited {compute.waiting_share:.0%}{free}, {load}{flag}"
