"""
Overnight runs: the crash loop guard, per-run iteration counts and the run's time limit, through the
real flow (in process), and `autoresearch deploy` on a real Prefect server (tests/test_deploy.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from infra.records import Status, Verdict
from infra.research.workspace import Workspace
from infra.session import session_start
from infra.store import Store, utcnow
from tests.conftest import requires_bwrap, requires_real_data


def test_deadline_counts_from_the_session_start_and_is_the_earlier_of_hours_and_until():
    from flows.research import deadline_of
    from infra.experiment_config import ExperimentConfig

    now = datetime.now(timezone.utc)
    assert deadline_of(ExperimentConfig(), now, 100.0) is None
    assert 159.0 < deadline_of(ExperimentConfig(stop_after_s=60), now, 100.0) <= 160.0
    # a session that began an hour ago (a run resumed after a crash) has spent that hour
    assert 159.0 < deadline_of(ExperimentConfig(stop_after_s=3660), now - timedelta(hours=1), 100.0) <= 160.0
    soon = (datetime.now() + timedelta(minutes=2)).strftime("%H:%M")  # its next occurrence: within 2 minutes
    assert 100.0 < deadline_of(ExperimentConfig(stop_at=soon, stop_after_s=3600), now, 100.0) <= 100.0 + 120
    # --until counts from the session as well: passed already for a session that began before it
    past = (datetime.now() - timedelta(minutes=2)).strftime("%H:%M")
    assert deadline_of(ExperimentConfig(stop_at=past), now - timedelta(minutes=10), 100.0) < 100.0


def test_a_run_right_after_crashed_runs_keeps_their_session():
    t = [datetime(2026, 11, 27, 22, tzinfo=timezone.utc) + timedelta(hours=h) for h in range(4)]
    assert session_start([(t[0], "Completed"), (t[1], "Running")]) == t[1]
    assert session_start([(t[0], "Completed"), (t[1], "Crashed"), (t[2], "Crashed"), (t[3], "Running")]) == t[1]
    assert session_start([(t[0], "Crashed"), (t[1], "Completed"), (t[2], "Running")]) == t[2]


@requires_real_data
@requires_bwrap
def test_crash_loop_guard_time_limit_and_new_iterations(tmp_path, prefect_harness, monkeypatch):
    from flows.research import research
    from infra import session as deployment_session

    home = tmp_path / "runs"
    config = dict(
        name="night",
        iterations=0,
        budget_s=1.0,
        repeats=1,
        proposer="offline",
        home=str(home),
        db_url=f"sqlite:///{home / 'autoresearch.db'}",
    )
    research(config)  # the baseline
    store = Store(config["db_url"])
    exp = store.experiment("night")
    # the orchestrator died in iteration 1 once already, and (the row left running) once more: K=2 reached
    store.put_iteration(
        exp.id,
        1,
        proposer="offline",
        hypothesis="poison",
        code="print('poison')",
        status=Status.RUNNING,
        verdict=Verdict.PENDING,
        orchestrator_crashes=1,
        started_at=utcnow(),
        finished_at=None,
    )
    session = datetime.now(timezone.utc)
    research({**config, "iterations": 2, "new_iterations": True})  # last finished 0, so iterations 1 and 2
    rows = store.records(exp.id)
    assert [r.iteration for r in rows] == [0, 1, 2] and all(r.finished for r in rows)
    poison = rows[1]
    assert (poison.status, poison.verdict, poison.orchestrator_crashes) == (Status.CRASHED, Verdict.DISCARD, 2)
    assert poison.reason == "crashed the orchestrator 2 times"
    assert rows[2].hypothesis != "poison" and rows[2].status in (Status.OK, Status.CRASHED, Status.TIMEOUT)
    incumbent = [r for r in store.iterations(exp.id) if Verdict(r.verdict).kept][-1]
    assert Workspace(home / "night").train_py.read_text() == incumbent.code

    # a run that resumes a crashed run of its deployment (its session began before iterations 1 and 2) adds
    # nothing: its 2 new iterations are done
    monkeypatch.setattr(deployment_session, "session_started", lambda: session)
    research({**config, "iterations": 2, "new_iterations": True})
    assert [r.iteration for r in store.records(exp.id)] == [0, 1, 2]
    monkeypatch.undo()

    # a run whose time is (nearly) up stops cleanly between iterations: nothing started, status "stopped"
    research({**config, "iterations": 2, "new_iterations": True, "stop_after_s": 0.001})
    assert [r.iteration for r in store.records(exp.id)] == [0, 1, 2]
    assert store.experiment("night").status == "stopped"
