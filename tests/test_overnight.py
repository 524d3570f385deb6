"""
Overnight runs: the crash loop guard, per-run iteration counts and the run's time limit, through the
real flow (in process), and `autoresearch deploy` on a real Prefect server (tests/test_deploy.py).
"""

from __future__ import annotations

from infra.records import Status, Verdict
from infra.research.workspace import Workspace
from infra.store import Store, utcnow
from tests.conftest import requires_bwrap, requires_real_data



def test_deadline_is_the_earlier_of_hours_and_until():
    from datetime import datetime, timedelta

    from flows.research import deadline_of
    from infra.experiment_config import ExperimentConfig

    assert deadline_of(ExperimentConfig(), 100.0) is None
    assert deadline_of(ExperimentConfig(stop_after_s=60), 100.0) == 160.0
    soon = (datetime.now() + timedelta(minutes=2)).strftime("%H:%M")  # its next occurrence: within 2 minutes
    assert 100.0 < deadline_of(ExperimentConfig(stop_at=soon, stop_after_s=3600), 100.0) <= 100.0 + 120


@requires_real_data
@requires_bwrap
def test_crash_loop_guard_time_limit_and_new_iterations(tmp_path, prefect_harness):
    from flows.research import research

    home = tmp_path / "runs"
    config = dict(name="night", iterations=0, budget_s=1.0, repeats=1, proposer="offline", home=str(home),
                  db_url=f"sqlite:///{home / 'autoresearch.db'}")
    research(config)  # the baseline
    store = Store(config["db_url"])
    exp = store.experiment("night")
    # the orchestrator died in iteration 1 once already, and (the row left running) once more: K=2 reached
    store.put_iteration(exp.id, 1, proposer="offline", hypothesis="poison", code="print('poison')", status=Status.RUNNING,
                        decision=Verdict.PENDING, orchestrator_crashes=1, started_at=utcnow(), finished_at=None)
    research({**config, "iterations": 2, "new_iterations": True})  # last finished 0, so iterations 1 and 2
    rows = store.records(exp.id)
    assert [r.iteration for r in rows] == [0, 1, 2] and all(r.finished for r in rows)
    poison = rows[1]
    assert (poison.status, poison.decision, poison.orchestrator_crashes) == (Status.CRASHED, Verdict.DISCARD, 2)
    assert poison.reason == "crashed the orchestrator 2 times"
    assert rows[2].hypothesis != "poison" and rows[2].status in (Status.OK, Status.CRASHED, Status.TIMEOUT)
    incumbent = [r for r in store.iterations(exp.id) if Verdict(r.decision).kept][-1]
    assert Workspace(home / "night").train_py.read_text() == incumbent.code

    # a run whose time is (nearly) up stops cleanly between iterations: nothing started, status "stopped"
    research({**config, "iterations": 2, "new_iterations": True, "stop_after_s": 0.001})
    assert [r.iteration for r in store.records(exp.id)] == [0, 1, 2]
    assert store.experiment("night").status == "stopped"
