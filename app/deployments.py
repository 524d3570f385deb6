"""
Scheduled (overnight) runs: a Prefect deployment of the research flow per experiment, served in the
foreground, and the two automations that make a crash recover by itself.

Why `serve` and not a work pool and worker: one process, nothing to set up, and the flow runs on this
machine where the data, the sandbox and the experiment's files are. The served process starts each
flow run as its own subprocess; a process work pool would add a pool, a worker and the same subprocess.

Crash recovery, all on the Prefect server (its event services are on in `autoresearch ui`'s server):
1. each flow run sends a heartbeat event every HEARTBEAT_S seconds (Prefect's flow engine does it when
   PREFECT_FLOWS_HEARTBEAT_FREQUENCY is set, which `serve_forever` does);
2. "<deployment> crashed": a proactive trigger that fires when a run of this deployment that sent a
   heartbeat sends neither another one nor a final state within SILENCE_S; it marks the run Crashed;
3. "<deployment> resume": a Crashed run of this deployment starts a new run of it, which resumes the
   experiment after its last finished iteration (flows/research.py).
One run at a time: the deployment's concurrency limit is 1 (a run due while one is running is cancelled),
and the experiment's lock (infra/research/lock.py) as well.

What a run may be told: only the experiment's name (flows/scheduled.py). The configuration `deploy` was
given is stored with the experiment; the serving process's environment names the experiment, the runs
home, the store and the flow's entrypoint (Prefect's runner would otherwise load the entrypoint the API
names), so nothing sent through the API can point a run elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from prefect import serve
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import (
    ConcurrencyLimitConfig,
    ConcurrencyLimitStrategy,
    StateType,
)
from prefect.client.schemas.schedules import CronSchedule
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events.actions import ChangeFlowRunState, RunDeployment
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.exceptions import ObjectNotFound

from flows.scheduled import DEPLOYED_EXPERIMENT_ENV, scheduled_research
from infra.experiment_config import ExperimentConfig
from infra.session import ran, resumes
from infra.settings import HOME_ENV, REPO_ROOT
from infra.store.store import DB_URL_ENV

FLOW_NAME = "research"  # flows/research.py's flow; a deployment is named research/<experiment>
HEARTBEAT_S = 30  # Prefect's minimum
SILENCE_S = 3 * HEARTBEAT_S  # no heartbeat for this long: the run is dead
FINAL_EVENTS = (
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Crashed",
)  # a run that ended sends one of these, not another heartbeat


class DeploymentError(ValueError):
    """Bad schedule, unknown deployment, no server: the message says what to do."""


@dataclass(frozen=True)
class DeploymentInfo:
    name: str  # the experiment
    schedule: str
    next_run: datetime | None
    paused: bool


def schedule_of(cron: str | None, interval: float | None) -> dict:
    """to_deployment's schedule argument: exactly one of a cron string (checked here) or an interval."""
    if (cron is None) == (interval is None):
        raise DeploymentError('give exactly one of --cron (e.g. "0 22 * * *") or --interval SECONDS')
    if interval is not None:
        if interval <= 0:
            raise DeploymentError(f"--interval must be positive, got {interval:g}")
        return {"interval": timedelta(seconds=interval)}

    try:
        CronSchedule(cron=cron)
    except ValueError:
        raise DeploymentError(
            f'--cron {cron!r} is not a valid cron string (minute hour day month weekday, e.g. "0 22 * * *")'
        ) from None
    return {"cron": cron}


ENTRYPOINT_FILE, ENTRYPOINT_FLOW = "flows/scheduled.py", "scheduled_research"  # the file relative to the repository


def build(config: ExperimentConfig, cron: str | None, interval: float | None):
    """The research flow's deployment for this experiment: its name as the one parameter, one run at a time."""

    return scheduled_research.to_deployment(
        name=config.name,
        parameters={"experiment": config.name},
        **schedule_of(cron, interval),
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        description=f"autoresearch experiment {config.name}: each run resumes it",
        tags=["autoresearch"],
    )


def automation_names(experiment: str) -> tuple[str, str]:
    return f"autoresearch {experiment}: mark silent runs crashed", f"autoresearch {experiment}: resume crashed runs"


def automations(experiment: str, deployment_id: UUID) -> list:
    """The crash detector and the resumer of one deployment (see the module's docstring)."""

    of_this_deployment = {"prefect.resource.id": f"prefect.deployment.{deployment_id}"}
    detect, resume = automation_names(experiment)
    return [
        AutomationCore(
            name=detect,
            trigger=EventTrigger(
                after={"prefect.flow-run.heartbeat"},
                expect={"prefect.flow-run.heartbeat", *FINAL_EVENTS},
                for_each={"prefect.resource.id"},
                match_related=of_this_deployment,
                posture=Posture.Proactive,
                threshold=1,
                within=timedelta(seconds=SILENCE_S),
            ),
            actions=[
                ChangeFlowRunState(
                    state=StateType.CRASHED, message=f"no heartbeat for {SILENCE_S} s: the orchestrator died"
                )
            ],
        ),
        AutomationCore(
            name=resume,
            trigger=EventTrigger(
                expect={"prefect.flow-run.Crashed"},
                match_related=of_this_deployment,
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[RunDeployment(source="selected", deployment_id=deployment_id)],
        ),  # its own parameters
    ]


def ensure_automations(experiment: str, deployment_id: UUID) -> None:
    """Create them once: an existing one with the same definition is kept, not recreated, because a new
    automation has not seen the heartbeats that came before it and would never mark those runs crashed
    (a restarted `deploy` after a SIGKILL is exactly when that matters). A changed one is replaced."""

    with get_client(sync_client=True) as client:
        for automation in automations(experiment, deployment_id):
            existing = client.read_automations_by_name(automation.name)
            if len(existing) == 1 and definition(existing[0]) == definition(automation):
                continue
            for old in existing:
                client.delete_automation(old.id)
            client.create_automation(automation)


def definition(automation) -> dict:
    """What an automation does, without its ids (the server gives every trigger its own). The trigger's event
    sets are sorted: a set's order follows string hashing, which differs from process to process, and an
    unsorted comparison made a restarted `deploy` recreate an unchanged automation (which then never saw the
    killed run's heartbeats: the flaky CI failure of tests/test_deploy.py)."""
    dumped = automation.model_dump(mode="json", include={"trigger", "actions", "enabled"})
    dumped["trigger"].pop("id", None)
    for key in ("after", "expect", "for_each"):
        if isinstance(dumped["trigger"].get(key), list):
            dumped["trigger"][key] = sorted(dumped["trigger"][key])
    return dumped


def serve_forever(deployment, config: ExperimentConfig) -> None:
    """Register the deployment and its automations, then run its scheduled runs until Ctrl-C. The runs inherit
    this process's environment: the experiment served, its home and store, the flow's entrypoint."""

    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_S))
    os.environ.update(
        {
            DEPLOYED_EXPERIMENT_ENV: config.name,
            HOME_ENV: config.home,
            DB_URL_ENV: config.db_url,
            "PREFECT__FLOW_ENTRYPOINT": f"{REPO_ROOT / ENTRYPOINT_FILE}:{ENTRYPOINT_FLOW}",
        }
    )

    deployment_id = deployment.apply()
    ensure_automations(deployment.name, deployment_id)
    serve(deployment, heartbeat_seconds=int(os.environ["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]))


def listed() -> list[DeploymentInfo]:
    """The research deployments with their schedule and next scheduled run."""

    infos = []
    with get_client(sync_client=True) as client:
        for dep in client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME]))):
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=1,
            )
            schedules = [describe_schedule(s.schedule) for s in dep.schedules]
            infos.append(
                DeploymentInfo(
                    dep.name, ", ".join(schedules) or "-", runs[0].expected_start_time if runs else None, dep.paused
                )
            )
    return infos


def describe_schedule(schedule) -> str:
    if getattr(schedule, "cron", None):
        return f"cron {schedule.cron} ({schedule.timezone or 'UTC'})"
    if getattr(schedule, "interval", None):
        return f"every {schedule.interval.total_seconds():g} s"
    return str(schedule)


def remove(experiment: str) -> None:
    """Delete the deployment (its scheduled runs go with it) and its automations."""

    with get_client(sync_client=True) as client:
        try:
            dep = client.read_deployment_by_name(f"{FLOW_NAME}/{experiment}")
        except ObjectNotFound:
            raise DeploymentError(f"no deployment named {experiment!r}; see: autoresearch deployments") from None
        client.delete_deployment(dep.id)
        for name in automation_names(experiment):
            for old in client.read_automations_by_name(name):
                client.delete_automation(old.id)


@dataclass(frozen=True)
class RunInfo:
    name: str  # the flow run's name (research-<experiment>, or Prefect's for a resumed one)
    deployment: str
    state: str
    started: datetime | None
    resumed: bool  # the run before it (same deployment) crashed


def recent_runs(limit: int = 20) -> list[RunInfo]:
    """The latest runs of research deployments, oldest first; a run after a Crashed one is marked resumed."""

    with get_client(sync_client=True) as client:
        names = {
            d.id: d.name for d in client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])))
        }
        # runs that started (a schedule leaves many that never will: due later, or cancelled as a collision)
        runs = [
            r
            for r in client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
                flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(is_null_=False)),
                sort=FlowRunSort.START_TIME_DESC,
                limit=10 * limit,
            )
            if r.deployment_id in names and ran(r)
        ]
    infos, previous = [], {}  # each deployment's run before this one
    for r in reversed(runs):
        infos.append(
            RunInfo(
                r.name,
                names[r.deployment_id],
                r.state_name or "-",
                r.start_time,
                resumes(previous.get(r.deployment_id)),
            )
        )
        previous[r.deployment_id] = r.state_name
    return infos[-limit:]
