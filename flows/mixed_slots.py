"""
Where measured runs execute when an experiment has a pool and local slots too (`run --pool NAME --local-slots K`):
this machine's slots (flows/slot_pool.py) and the pool's workers (flows/pool_slots.py) together, under the same
contract as each, so the loop does not know the difference.

A job goes to a free local slot first (no flow run to start, nothing over the wire), else to the pool. Results are
taken in the order they arrive from either side: local runs are waited for between the pool's polls. Every run
carries the experiment's compute (Limits) wherever it is measured; the record names its worker ('' for a local
slot) and its slot (local slots are numbered first, the pool's after them).
"""

from __future__ import annotations

import time
from pathlib import Path

from flows.pool_slots import POLL_S, PoolSlots
from flows.slot_pool import SlotPool
from infra.records import MeasuredRun
from infra.sandbox.slots import Slot
from tasks.measure import Job


class MixedSlots:
    def __init__(self, local: SlotPool, pool: PoolSlots):
        self.local = local
        self.pool = pool

    @property
    def idle(self) -> int:
        return self.local.idle + self.pool.idle

    def jobs(self) -> list[Job]:
        return [*self.local.jobs(), *self.pool.jobs()]

    def run_dirs(self) -> set[Path]:
        return self.local.run_dirs() | self.pool.run_dirs()

    def submit(self, job: Job) -> Slot | int:
        """Measure job on a free local slot, else on a free pool slot (there must be one); returns that slot."""
        return self.local.submit(job) if self.local.idle else self.pool.submit(job)

    def next_result(self) -> tuple[Job, MeasuredRun]:
        """The next run to finish on either side, already stored, and its job; its slot is free again."""
        if not self.jobs():
            raise RuntimeError("no run is being measured: there is no result to wait for")
        while True:
            done = self.pool.poll() if self.pool.jobs() else None
            if done is None and self.local.jobs():
                done = self.local.wait_result(POLL_S)  # the pause between the pool's polls
            elif done is None:
                time.sleep(POLL_S)
            if done is not None:
                return done

    def drain(self) -> None:
        """Stop the pool's jobs at once, then wait for the local runs (as each side drains alone)."""
        try:
            self.pool.drain()
        finally:  # the pool's server unreachable (likely, in an error) must not leave local runs unwaited for
            self.local.drain()
