"""
Chaos: the real `autoresearch run` process is SIGKILLed at several points; each re-run
resumes, and at the end the store, the workspace git history and the incumbent agree,
with no iteration missing, duplicated or trained twice. Iteration 2 kills the orchestrator
every time it trains (a poisonous candidate): after the crash limit (2) it is recorded as
failed and skipped, and the loop goes on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.research.code_edit import set_constants
from infra.research.lock import lock_holder
from infra.research.workspace import Workspace
from infra.sandbox import process_tree
from infra.settings import BASELINE_TRAIN_PY, REPO_ROOT
from infra.store import Store
from tests.conftest import requires_bwrap, requires_real_data

pytestmark = [requires_real_data, requires_bwrap, pytest.mark.process_driven]
FIXTURES = Path(__file__).parent / "fixtures"
# measured:1 kills between two measured runs of one decision (right after its first run is stored)
KILL_POINTS = ["propose:1", "measured:1", "train:2", "train:2", "decided:3", "recorded:3"]


def run_cli(
    home: Path, replay: Path, failpoint: str | None, experiment: str = "chaos", iterations: int = 3, slots: int = 1
) -> subprocess.CompletedProcess:
    baseline = replay.parent / "weak_baseline.py"
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect-home"), "AUTORESEARCH_FAILPOINT": failpoint or ""}
    env.pop("PREFECT_API_URL", None)
    # output to a file, not a pipe: a leaked grandchild holding a pipe would hang the test instead of failing it
    output = home.parent / f"cli-{experiment}-{failpoint or 'final'}.log"
    with open(output, "w") as sink:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "app.cli",
                "run",
                "--experiment",
                experiment,
                "--iterations",
                str(iterations),
                "--budget",
                "2",
                "--proposer",
                f"replay:{replay}",
                "--baseline",
                str(baseline),
                "--home",
                str(home),
                "--slots",
                str(slots),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    done.stderr = output.read_text()
    return done


def finished_logs(home: Path, store: Store) -> dict[int, float | None]:
    """mtime of each finished iteration's first train.log: a re-trained iteration would change it."""
    exp = store.experiment("chaos")
    if exp is None:
        return {}
    ws = Workspace(home / "chaos")
    logs = {}
    for record in store.records(exp.id, finished_only=True):
        if not record.runs:  # never measured (the loop guard recorded it): nothing to train again
            logs[record.iteration] = None
            continue
        log = ws.run_dir(record.iteration, record.runs[0].seed) / "train.log"  # the first measured run
        logs[record.iteration] = log.stat().st_mtime
    return logs


def stray_processes(home: Path) -> list[int]:
    """Anything still running whose environment names this test's runs directory."""
    return process_tree.pids_with_env(str(home))


def test_sigkill_at_any_point_then_resume(tmp_path):
    home = tmp_path / "runs"
    replay = tmp_path / "replay"
    replay.mkdir()
    # an untrained baseline (learning rate 0: its accuracy is its random init, whatever the epochs), so that
    # the MLP at iteration 3 is a sure keep even on a loaded machine
    # and the kill between the store write and the git commit meets a real commit
    baseline = set_constants(BASELINE_TRAIN_PY.read_text(), {"LEARNING_RATE": 0.0})
    (tmp_path / "weak_baseline.py").write_text(baseline)
    (replay / "01_copy.py").write_text("# a copy of the baseline\n" + baseline)
    (replay / "02_lr.py").write_text("# start learning\n" + set_constants(baseline, {"LEARNING_RATE": 0.01}))
    (replay / "03_mlp.py").write_text((FIXTURES / "mlp_adam.py").read_text())
    store = Store(f"sqlite:///{home / 'autoresearch.db'}")

    killed_inside_a_decision, resumed_output = [], ""
    for point in KILL_POINTS:
        before = finished_logs(home, store)
        done = run_cli(home, replay, point)
        assert done.returncode == -9, f"{point}: expected SIGKILL, got {done.returncode}\n{done.stderr[-3000:]}"
        if killed_inside_a_decision and not resumed_output:  # the run after the kill inside iteration 1's decision
            resumed_output = done.stderr
        if point == "measured:1":
            killed_inside_a_decision = store.measured_runs(store.experiment("chaos").id, decided_in=1)
            assert len(killed_inside_a_decision) == 1
        after = finished_logs(home, store)
        assert {k: after[k] for k in before} == before, f"{point}: a finished iteration was trained again"
        assert list(after) == list(range(len(after))), f"{point}: finished iterations are not 0..n"
        assert stray_processes(home) == [], f"{point}: processes left running"
        assert lock_holder(home / "chaos") is None

    before = finished_logs(home, store)
    final = run_cli(home, replay, None)
    assert final.returncode == 0, final.stderr[-3000:]
    after = finished_logs(home, store)
    assert {k: after[k] for k in before} == before

    exp = store.experiment("chaos")
    rows = store.iterations(exp.id)
    assert [r.index for r in rows] == [0, 1, 2, 3]
    assert all(r.finished_at is not None for r in rows)
    # the decision killed between two of its runs went on with the run it had: none lost, none counted twice,
    # none made again (its first run's seed and number are the decision's first)
    made_for_1 = [m for m in store.measured_runs(exp.id, decided_in=1) if not m.remeasured]
    assert made_for_1[0] == killed_inside_a_decision[0]
    used = [r["seq"] for r in rows[1].decision["candidate_runs"]] + [
        r["seq"] for r in rows[1].decision["incumbent_runs"]
    ]
    assert len(used) == len(set(used)) and killed_inside_a_decision[0].seq in used
    assert [r["seq"] for r in rows[1].decision["candidate_runs"]] == [m.seq for m in made_for_1 if m.iteration == 1]
    assert rows[1].orchestrator_crashes == 1 and "iteration 1: resuming its decision with 1 candidate" in resumed_output
    poison = rows[2]
    assert (poison.status, poison.verdict, poison.orchestrator_crashes) == ("crashed", "discard", 2)
    assert poison.reason == "crashed the orchestrator 2 times"
    assert rows[3].orchestrator_crashes == 1  # killed once after its decision, run again once
    assert rows[3].verdict == "keep", (rows[3].status, rows[3].reason, rows[3].decision)
    ws = Workspace(home / "chaos")
    kept = [r.index for r in rows if r.verdict in ("baseline", "keep")]
    assert ws.committed_iterations() == kept
    assert ws.train_py.read_text() == rows[kept[-1]].code
    assert ws.git("status", "--porcelain").strip() == ""
    assert exp.status == "finished"
    assert stray_processes(home) == []


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two slots need two usable cores")
def test_sigkill_with_two_runs_in_flight_then_resume(tmp_path):
    """Two slots: the orchestrator is SIGKILLed the moment a run of iteration 2's decision is stored, while the
    other slot measures another decision's run; then once after a decision is recorded. Each re-run adopts every
    unfinished decision with the runs stored (the one in flight at the kill is made again): at the end every
    iteration is decided once, every run numbered once, no run counted by two decisions, nothing left running."""
    home = tmp_path / "runs"
    replay = tmp_path / "replay"
    replay.mkdir()
    baseline = set_constants(BASELINE_TRAIN_PY.read_text(), {"LEARNING_RATE": 0.0})
    (tmp_path / "weak_baseline.py").write_text(baseline)
    for k, lr in enumerate((0.0, 0.001, 0.01), 1):
        (replay / f"{k:02d}_lr.py").write_text(
            f"# learning rate {lr}\n" + set_constants(baseline, {"LEARNING_RATE": lr})
        )
    (replay / "04_mlp.py").write_text((FIXTURES / "mlp_adam.py").read_text())
    store = Store(f"sqlite:///{home / 'autoresearch.db'}")

    stored_at_kill: list = []
    for point in ("measured:2", "recorded:3"):
        done = run_cli(home, replay, point, experiment="pair", iterations=4, slots=2)
        assert done.returncode == -9, f"{point}: expected SIGKILL, got {done.returncode}\n{done.stderr[-3000:]}"
        assert stray_processes(home) == [], f"{point}: processes left running"
        assert lock_holder(home / "pair") is None
        if point == "measured:2":
            stored_at_kill = store.measured_runs(store.experiment("pair").id)
            assert [m.decided_in for m in stored_at_kill].count(2) == 1
    final = run_cli(home, replay, None, experiment="pair", iterations=4, slots=2)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "resuming its decision" in (home.parent / "cli-pair-recorded:3.log").read_text()

    exp = store.experiment("pair")
    rows = store.iterations(exp.id)
    assert [r.index for r in rows] == [0, 1, 2, 3, 4] and all(r.finished_at is not None for r in rows)
    measured = store.measured_runs(exp.id)
    assert [m.seq for m in measured] == list(range(1, len(measured) + 1))
    assert measured[: len(stored_at_kill)] == stored_at_kill, "nothing stored before the kill was lost or changed"
    assert {m.slot for m in measured} == {0, 1}
    used: list[int] = []
    for r in rows[1:]:
        if r.decision.get("candidate_runs"):
            own = [m.seq for m in measured if m.decided_in == r.index and m.iteration == r.index and not m.remeasured]
            counted = [c["seq"] for c in r.decision["candidate_runs"]]
            # every run stored before its last look counts; one still being measured then is stored after, unused
            assert counted == own[: len(counted)], (r.index, counted, own)
            used += counted
    assert len(used) == len(set(used)), "a run counted by two decisions"
    # iteration 2's decision went on with the run stored at the kill, unless it was in flight at both kills (then
    # the crash limit, 2, recorded it as failed: a crash cannot be pinned on one of the runs in flight)
    killed_in_2 = next(m for m in stored_at_kill if m.decided_in == 2)
    if rows[2].orchestrator_crashes == 2:
        assert rows[2].reason == "crashed the orchestrator 2 times"
    else:
        used_by_2 = rows[2].decision.get("candidate_runs", []) + rows[2].decision.get("incumbent_runs", [])
        assert rows[2].orchestrator_crashes == 1 and killed_in_2.seq in [c["seq"] for c in used_by_2], rows[2].rule
    assert rows[4].verdict == "keep", (rows[4].status, rows[4].reason, rows[4].decision)
    ws = Workspace(home / "pair")
    kept = sorted((r for r in rows if r.verdict in ("baseline", "keep")), key=lambda r: r.finished_at)
    assert ws.committed_iterations() == sorted(r.index for r in kept)
    assert ws.train_py.read_text() == kept[-1].code
    assert ws.git("status", "--porcelain").strip() == ""
    assert stray_processes(home) == []
