"""
A pool worker's own configuration, and its slots.

`autoresearch worker` checks its options once and hands them to the measurement flow runs it starts as one JSON
environment variable (WORKER_ENV): a flow run is a fresh process, and the job it measures says nothing of where
it runs. Each flow run takes one slot by an exclusive lock on the slot's file under the worker's home: Prefect's
`--limit` keeps at most `slots` flow runs at once, the locks say which one runs where.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel, ConfigDict, Field

from infra.pool.protocol import WORKER_NAME
from infra.sandbox.slots import Slot, plan_slots

WORKER_ENV = "AUTORESEARCH_WORKER"
SLOT_WAIT_S = 1.0
WORKER_QUERY_S = 2  # how often the Prefect worker asks for runs (its default, 10 s, would idle slots)


class WorkerSetup(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=WORKER_NAME)
    pool: str = Field(min_length=1, max_length=200)
    home: Path  # the worker's own directory: its runs and slot locks, shared with no one
    db_url: str  # the coordinator's store, where answers go
    slots: int = Field(ge=1)
    cpu_threads: int = Field(ge=1)  # cores a run (every job must ask for this many)
    devices: list[str] | None = None  # one GPU per slot, or None for CPU slots

    def plan(self) -> list[Slot]:
        return plan_slots(self.slots, self.cpu_threads, self.devices)

    def to_env(self) -> dict[str, str]:
        return {WORKER_ENV: self.model_dump_json()}

    @classmethod
    def from_env(cls) -> WorkerSetup:
        raw = os.environ.get(WORKER_ENV)
        if not raw:
            raise RuntimeError(f"{WORKER_ENV} is not set: measurement flow runs are started by `autoresearch worker`")
        return cls.model_validate_json(raw)

    @contextmanager
    def slot(self) -> Iterator[Slot]:
        """A slot of this worker's to measure in, held until the block ends (waits while every one is busy)."""
        locks = self.home / "slots"
        locks.mkdir(parents=True, exist_ok=True, mode=0o700)
        plan = self.plan()
        while True:
            for slot in plan:
                fd = os.open(locks / f"{slot.name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                try:
                    yield slot
                    return
                finally:
                    os.close(fd)  # closing the descriptor releases the lock
            time.sleep(SLOT_WAIT_S)
