"""What `autoresearch status --pool NAME` shows: the pool's workers (Prefect's record of them) and the measurement
flow runs in flight on it, each with the worker that claimed its job in the store (flows/pool_slots.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.exceptions import ObjectNotFound

from flows.pool_slots import ACTIVE, EXPERIMENT_TAG, job_id_of
from infra.store import Store


class PoolMissing(LookupError):
    """No work pool of that name on the server."""


@dataclass(frozen=True)
class PoolWorker:
    name: str
    status: str
    heartbeat: datetime | None


@dataclass(frozen=True)
class PoolRun:
    name: str
    experiment: str
    state: str
    worker: str | None  # the worker that claimed its job; None: none yet
    claimed: datetime | None


@dataclass(frozen=True)
class PoolView:
    workers: list[PoolWorker]
    runs: list[PoolRun]


def read(pool: str, store: Store) -> PoolView:
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise PoolMissing(f"no work pool named {pool!r} on this Prefect server") from None
        workers = [
            PoolWorker(w.name, str(w.status.value if w.status else "unknown").lower(), w.last_heartbeat_time)
            for w in client.read_workers_for_work_pool(pool)
        ]
        flow_runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(ACTIVE)))),
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[pool])),
            limit=200,
        )
    job_of = {run.id: job_id for run in flow_runs if (job_id := job_id_of(run)) is not None}
    claims = {lease.job_id: lease for lease in store.pool_jobs(job_of.values(), max_answer_bytes=0)}  # claims only
    runs = []
    for run in flow_runs:
        lease = claims.get(job_of.get(run.id, ""))
        experiment = next((t[len(EXPERIMENT_TAG) :] for t in run.tags if t.startswith(EXPERIMENT_TAG)), "?")
        state = run.state.type.value.lower() if run.state else "?"
        runs.append(
            PoolRun(run.name, experiment, state, lease.worker if lease else None, lease.started_at if lease else None)
        )
    return PoolView(workers, runs)
