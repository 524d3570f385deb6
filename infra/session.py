"""
A deployment's session: the runs of one deployment that belong together because each resumed a crashed one.

A run right after a Crashed run of the same deployment was started by the resume automation (app/deployments.py)
and continues that run's session, and so on back. The research flow counts --hours, --until and --iterations from
the session's start, so a crash buys no extra night; `autoresearch runs` marks such runs resumed. This module is
that one rule, read from the Prefect API.
"""

from __future__ import annotations

from datetime import datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterStartTime,
)
from prefect.client.schemas.sorting import FlowRunSort
from prefect.context import FlowRunContext


def ran(flow_run) -> bool:
    """It ran: not a run the schedule cancelled as a collision (one runs already), which has a start time too."""
    return flow_run.start_time is not None and not (flow_run.state_name == "Cancelled" and flow_run.run_count == 0)


def resumes(previous_state: str | None) -> bool:
    """A run whose deployment's previous run ended in this state resumes that run's session."""
    return previous_state == "Crashed"


def session_start(runs: list[tuple[datetime, str]]) -> datetime:
    """(start time, state name) of a deployment's runs, oldest first, up to this run: when this run's session
    began."""
    start = runs[-1][0]
    for earlier_start, state in reversed(runs[:-1]):
        if not resumes(state):
            break
        start = earlier_start
    return start


def session_started() -> datetime | None:
    """When this flow run's session began, if it resumes a crashed run of its deployment (None otherwise: its
    session is its own)."""
    context = FlowRunContext.get()
    this = context.flow_run if context else None
    if this is None or this.deployment_id is None:
        return None
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[this.deployment_id])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(is_null_=False)),
            sort=FlowRunSort.START_TIME_DESC,
            limit=50,
        )
    started = [r for r in reversed(runs) if ran(r)]
    mine = next((k for k, r in enumerate(started) if r.id == this.id), None)
    if mine is None:
        return None
    began = session_start([(r.start_time, r.state_name or "") for r in started[: mine + 1]])
    return began if began < started[mine].start_time else None
