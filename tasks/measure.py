"""Task: one measured run (train, then evaluate) in one measurement slot, stored the moment it is measured.

Each measured run is its own Prefect task run, tagged with its slot; the research flow submits them on its
thread-pool task runner, one per free slot, so the flow run's timeline shows them side by side.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.failpoints import failpoint
from infra.records import MeasuredRun
from infra.sandbox.compute_record import describe
from infra.sandbox.slots import Slot
from infra.settings import Limits
from infra.store import Store, utcnow
from tasks.evaluate import evaluate
from tasks.sandboxed_train import sandboxed_train

MAX_CONTENDED_RERUNS = 2  # how often a run starved by the machine's load is measured again


def new_seed() -> int:
    """The seed of a measured run (its directory is ws.run_dir(iteration, seed)): drawn at random, so a candidate
    cannot tell its first run, on which a keep is first decided, from the runs after it (a candidate that knew
    sabotaged one of its later runs to freeze the experiment: infra/research/acceptance_rule.py)."""
    return secrets.randbelow(2**31)


@dataclass(frozen=True)
class Job:
    """One run to measure: whose code, for which decision, with which seed."""

    code: str
    iteration: int  # whose code: a candidate's iteration, or the incumbent's when measured again
    decided_in: int  # the decision that asked for it
    seed: int


@dataclass(frozen=True)
class Bench:
    """What every measured run of an experiment shares: where it is stored, where its files go, its compute."""

    store: Store
    experiment_id: int
    run_dir: Callable[[int, int], Path]  # (iteration, seed) -> the run's directory
    limits: Limits
    val: tuple[torch.Tensor, torch.Tensor]
    device: str | None


def measure(bench: Bench, job: Job, slot: Slot) -> MeasuredRun:
    """Measure job in slot and store it. A run the machine's load starved (infra/sandbox/compute_record.py) is
    measured again with the same seed, at most MAX_CONTENDED_RERUNS times; every attempt is stored, the ones
    measured again marked so."""
    for attempt in range(MAX_CONTENDED_RERUNS + 1):
        started = utcnow()
        trained = sandboxed_train(
            job.code, bench.run_dir(job.iteration, job.seed), bench.limits, job.seed, job.iteration, bench.device, slot
        )
        result = evaluate(trained, bench.val, bench.limits, job.iteration, job.seed, slot)
        again = result.contended and attempt < MAX_CONTENDED_RERUNS
        stored = bench.store.add_measured_run(
            bench.experiment_id,
            MeasuredRun(
                seq=0,
                iteration=job.iteration,
                decided_in=job.decided_in,
                seed=job.seed,
                status=result.status,
                val_accuracy=result.val_accuracy,
                reason=result.reason,
                val_loss=result.val_loss,
                epochs=result.epochs,
                train_seconds=result.train_seconds,
                wall_seconds=result.wall_seconds,
                inference_seconds=result.inference_seconds,
                contended=result.contended,
                remeasured=again,
                compute=result.compute,
                slot=slot.index,
                started_at=started,
            ),
        )
        failpoint("measured", job.decided_in)
        if not again:
            return stored
        print(f"iteration {job.iteration} seed {job.seed}: contended ({describe(result.compute)}): measured again")
    raise AssertionError("unreachable: the last attempt is never measured again")


@task(name="measure", task_run_name="measure-{job.iteration}-for-{job.decided_in}-{slot.name}", cache_policy=NO_CACHE)
def measured_run(bench: Bench, job: Job, slot: Slot) -> MeasuredRun:
    return measure(bench, job, slot)
