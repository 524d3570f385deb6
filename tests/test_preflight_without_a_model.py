"""
Proposers without a language model (offline, replay) under --preflight: a candidate that crashes its smoke run
cannot be fixed, so the iteration is recorded as failed, its pre-flight log is kept, and the loop goes on
(it used to end the flow with an AttributeError: they had no `fix`).
"""

from __future__ import annotations

from infra.records import Status, Verdict
from infra.research.code_edit import tunable_constants
from infra.research.workspace import Workspace
from infra.settings import BASELINE_TRAIN_PY
from infra.store import Store
from tests.conftest import requires_bwrap

pytestmark = requires_bwrap

SAVE = (
    "from prepare import save_model\nfrom torch import nn\n"
    "save_model(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))\n"
)
CRASH = "# crashes at once\nraise RuntimeError('shapes do not match: 784 vs 748')\n"


def run_loop(tmp_path, name: str, proposer: str, iterations: int, baseline: str | None = None) -> tuple[Store, list]:
    from flows.research import research

    home = tmp_path / "runs"
    baseline_path = tmp_path / f"{name}-baseline.py"
    baseline_path.write_text(baseline or BASELINE_TRAIN_PY.read_text())
    config = dict(
        name=name,
        iterations=iterations,
        budget_s=1.0,
        proposer=proposer,
        repeats=1,
        revise_every=100,
        home=str(home),
        db_url=f"sqlite:///{home / 'autoresearch.db'}",
        baseline_path=str(baseline_path),
        preflight=True,
        fix_attempts=2,
    )
    research(config)
    store = Store(config["db_url"])
    return store, store.records(store.experiment(name).id)


def assert_failed_preflight(record, home, name: str, message: str) -> None:
    assert record.status == Status.INVALID and record.verdict == Verdict.DISCARD
    assert "cannot fix a candidate that crashed" in record.reason, record.reason
    assert len(record.attempts) == 1 and record.attempts[0]["status"] == Status.CRASHED  # asked once, no fix
    assert message in record.attempts[0]["log_tail"]
    log = Workspace(home / name).iteration_dir(record.iteration) / "preflight-0" / "train.log"
    assert message in log.read_text(), "the crashed pre-flight's log is kept"


def test_replay_with_preflight_records_the_crash_and_goes_on(tmp_path, synthetic_data, prefect_harness, capsys, caplog):
    replay = tmp_path / "replay"
    replay.mkdir()
    (replay / "01_crash.py").write_text(CRASH)
    (replay / "02_fine.py").write_text("# a linear model, saved at once\n" + SAVE)
    store, records = run_loop(tmp_path, "replayed", f"replay:{replay}", iterations=2)
    assert [r.iteration for r in records] == [0, 1, 2] and all(r.finished for r in records)
    assert_failed_preflight(records[1], tmp_path / "runs", "replayed", "shapes do not match")
    assert records[2].status == Status.OK and records[2].attempts[0]["status"] == Status.OK
    # the console line shows the decision in the rule's one form (acceptance_rule.summary)
    decision = records[2].decision
    printed = capsys.readouterr()  # Prefect's log_prints sends it to stdout, stderr or the log, by its handlers
    assert f"iteration 2/2: ok discard ({decision.summary}" in (printed.out + printed.err + caplog.text)


def test_offline_with_preflight_records_the_crash_and_goes_on(tmp_path, synthetic_data, prefect_harness):
    """A baseline that refuses any change of its constants: every offline move crashes its pre-flight."""
    baseline = BASELINE_TRAIN_PY.read_text()
    constants = tunable_constants(baseline)
    names = ", ".join(constants)
    guard = (
        f"if ({names},) != ({', '.join(repr(v) for v in constants.values())},):\n"
        "    raise RuntimeError('a constant changed: this recipe refuses it')\n"
    )
    guarded = baseline.replace("\nimport math\n", f"\n{guard}import math\n", 1)
    assert guard in guarded
    store, records = run_loop(tmp_path, "guarded", "offline", iterations=2, baseline=guarded)
    assert [r.iteration for r in records] == [0, 1, 2] and all(r.finished for r in records)
    assert records[0].status == Status.OK
    for record in records[1:]:
        assert record.memory.get("constant") in constants  # its move is remembered, though it failed
        assert_failed_preflight(record, tmp_path / "runs", "guarded", "a constant changed")
