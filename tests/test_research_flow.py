"""The research flow end to end on the real data, in process under one Prefect test harness."""

from __future__ import annotations

from pathlib import Path

from infra import failpoints
from infra.research.code_edit import set_constants
from infra.research.workspace import Workspace
from infra.settings import BASELINE_TRAIN_PY
from infra.store import Store
from tests.conftest import requires_bwrap, requires_real_data

pytestmark = [requires_real_data, requires_bwrap]
FIXTURES = Path(__file__).parent / "fixtures"


# The shipped baseline (SGD lr=0.1, no decay) has heavy-tailed noise: about one seed in six lands near
# 0.76 instead of 0.84 (measured over 6 seeds when the project began). With three baseline runs, one such run puts
# the honest threshold
# near 12 points, and a +5-point MLP is rightly not distinguishable (seen in CI). This test checks the
# rule, not the dice: its incumbent is the same recipe at lr=0.01, which varies by about half a point.
QUIET_BASELINE = set_constants(BASELINE_TRAIN_PY.read_text(), {"LEARNING_RATE": 0.01})


def write_replay(directory: Path, copies: int) -> Path:
    directory.mkdir()
    baseline = QUIET_BASELINE
    for k in range(1, copies + 1):
        (directory / f"{k:02d}_copy.py").write_text(
            f"# copy {k} of the incumbent: only this comment differs\n{baseline}"
        )
    (directory / f"{copies + 1:02d}_mlp.py").write_text((FIXTURES / "mlp_adam.py").read_text())
    return directory


def test_noise_copies_are_not_kept_and_a_real_improvement_is(tmp_path, prefect_harness, monkeypatch):
    from flows.research import research

    replay = write_replay(tmp_path / "replay", copies=10)
    baseline = tmp_path / "quiet_baseline.py"
    baseline.write_text(QUIET_BASELINE)
    home = tmp_path / "runs"
    # a transient failure after iteration 4 is recorded: the flow's own retry must resume, not redo
    monkeypatch.setenv("AUTORESEARCH_FAILPOINT", "raise-once:recorded:4")
    config = dict(
        name="copies",
        iterations=12,
        budget_s=2.0,
        proposer=f"replay:{replay}",
        revise_every=5,
        repeats=3,
        home=str(home),
        db_url=f"sqlite:///{home / 'autoresearch.db'}",
        baseline_path=str(baseline),
    )
    best = research(config)

    store = Store(config["db_url"])
    exp = store.experiment("copies")
    rows = store.records(exp.id)
    assert [r.iteration for r in rows] == list(range(12)), (
        "11 replayed files: iterations 0..11, then the proposer is done"
    )
    assert all(r.finished for r in rows)
    assert all(r.status == "ok" for r in rows), [(r.iteration, r.status, r.reason) for r in rows]
    copies = rows[1:11]
    assert all(r.change_type == "none" for r in copies)
    kept_copies = [r.iteration for r in copies if r.verdict == "keep"]
    assert len(kept_copies) <= 1, f"noise kept: {kept_copies}"
    mlp = rows[11]
    assert mlp.verdict == "keep" and mlp.change_type == "structural"
    decided = mlp.decision
    assert decided.stop == "kept" and decided.sure >= decided.needed and decided.delta > 0.002
    assert "sure" in decided.summary and "keep needs" in decided.summary
    # every measured run is recorded with the compute it got; a keep needs at least two runs, every one ok
    counted = [r for r in mlp.runs if not r.remeasured]  # a run the machine's load starved is shown, not counted
    assert len(mlp.measurements) >= 2 and len(counted) == len(mlp.measurements)
    assert all(r.compute.clock == "cpu" and r.compute.threads == 1 and r.compute.cpu_seconds > 0 for r in mlp.runs)
    assert [r.val_accuracy for r in counted] == mlp.measurements
    assert [r.seq for r in decided.candidate_runs] == [r.seq for r in counted]
    # the store numbered every measured run once, in order; the decision's incumbent runs are the incumbent's
    measured = store.measured_runs(exp.id)
    assert [m.seq for m in measured] == list(range(1, len(measured) + 1))
    incumbent_seqs = {m.seq for m in measured if m.iteration == decided.incumbent}  # the baseline, or a kept copy
    assert {r.seq for r in decided.incumbent_runs} <= incumbent_seqs
    assert len(decided.incumbent_runs) >= 2
    assert mlp.test_accuracy is not None and 0.8 < mlp.test_accuracy < 1
    assert best["iteration"] == 11
    # decisions carry the rule's numbers
    assert all(
        None not in (r.decision.delta, r.decision.sigma, r.decision.sure)
        and r.decision.verdict
        and r.decision.stop
        and r.decision.summary
        and r.decision.candidate_runs
        for r in copies
    )
    # strategy revised after iterations 5 and 10, as its own versions
    assert [(s.version, s.after_iteration) for s in store.strategies(exp.id)] == [(0, 0), (1, 5), (2, 10)]
    # store, git history and incumbent agree
    ws = Workspace(home / "copies")
    kept = [r.iteration for r in rows if r.verdict in ("baseline", "keep")]
    assert ws.committed_iterations() == kept
    assert ws.train_py.read_text() == mlp.code
    assert (home / "copies" / "progress.png").stat().st_size > 1000
    # the injected failure fired, and the flow's retry finished the experiment without duplicates
    assert "raise-once:recorded:4" in failpoints._fired
    assert published_artifact_keys("copies-") >= {
        "copies-history",
        "copies-progress",
        "copies-best",
        "copies-strategy",
        "copies-progress-plot",
    }


def published_artifact_keys(prefix: str) -> set[str]:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def keys() -> set[str]:
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=prefix)))
            return {a.key for a in found}

    return asyncio.run(keys())
