"""
Where measured runs execute: the experiment's measurement slots on this machine (infra/sandbox/slots.py).

Each slot measures one run at a time, as its own Prefect task run tagged with the slot (tasks/measure.py),
submitted on the flow's thread-pool task runner; the research loop hands a job to a free slot and takes results
as they arrive. This is the one place that knows where a run executes: runs on other machines (a Prefect work
pool) replace this class, or join it (flows/mixed_slots.py), not the loop.
"""

from __future__ import annotations

import concurrent.futures
from concurrent.futures import FIRST_COMPLETED
from pathlib import Path

from prefect import tags
from prefect.futures import PrefectConcurrentFuture, PrefectFuture, as_completed

from infra.records import MeasuredRun
from infra.sandbox.slots import Slot
from tasks.measure import Bench, Job, measured_run


class SlotPool:
    def __init__(self, bench: Bench, slots: list[Slot]):
        self.bench = bench
        self.free = sorted(slots, key=lambda s: s.index)
        self.running: dict[PrefectConcurrentFuture, tuple[Job, Slot]] = {}  # the flow's runner is a thread pool

    @property
    def idle(self) -> int:
        """How many slots have nothing to measure."""
        return len(self.free)

    def jobs(self) -> list[Job]:
        """The jobs being measured now."""
        return [job for job, _ in self.running.values()]

    def run_dirs(self) -> set[Path]:
        """The directories of the runs being measured now (their files are not to be touched)."""
        return {self.bench.run_dir(job.iteration, job.seed) for job in self.jobs()}

    def submit(self, job: Job) -> Slot:
        """Measure job on the first free slot (there must be one); returns that slot."""
        slot = self.free.pop(0)
        with tags(slot.name):
            future = measured_run.submit(self.bench, job, slot)
        self.running[future] = (job, slot)
        return slot

    def next_result(self) -> tuple[Job, MeasuredRun]:
        """The next run to finish, already stored, and its job; its slot is free again. An infrastructure error
        of the run (after its task's retries) is raised here."""
        return self._take(next(as_completed(list(self.running))))

    def wait_result(self, timeout: float) -> tuple[Job, MeasuredRun] | None:
        """next_result, or None when no run finishes within timeout seconds (or none is being measured)."""
        # the thread-pool runner's own futures: Prefect's as_completed times out through a cancel scope (an alarm
        # signal on the main thread), which a wait in a loop that polls other work must not leave behind
        by_thread = {future.wrapped_future: future for future in self.running}
        done, _ = concurrent.futures.wait(list(by_thread), timeout=timeout, return_when=FIRST_COMPLETED)
        return self._take(by_thread[next(iter(done))]) if done else None

    def _take(self, future: PrefectFuture) -> tuple[Job, MeasuredRun]:
        job, slot = self.running.pop(future)
        self.free = sorted([*self.free, slot], key=lambda s: s.index)
        return job, future.result()

    def drain(self) -> None:
        """Wait until nothing is measured any more (an error in the loop: no run goes on without it), results
        dropped: the ones that finished are stored already."""
        for future in as_completed(list(self.running)):
            try:
                future.result()
            except Exception:  # the error being raised is the loop's; this one is the run's, and stored nowhere
                pass
        self.running.clear()
