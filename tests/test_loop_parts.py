"""The research loop's parts without Prefect: code edits, proposers, program.md, lock, store, workspace."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from dataclasses import replace

import pytest

from infra.proposers import ProposalContext, ProposerError, is_language_model, make_proposer, resolve_spec
from infra.proposers.offline import OfflineProposer, parse_search_block, step_sizes
from infra.proposers.replay import ReplayProposer
from infra.records import DecisionRecord, Verdict
from infra.research.code_edit import classify_change, set_constants, tunable_constants, unified_diff
from infra.research.lock import LockHeld, experiment_lock, lock_holder
from infra.research.program import ProgramError, read_program, strategy_of, with_strategy
from infra.research.workspace import Workspace
from infra.sandbox.compute_record import ComputeRecord
from infra.settings import BASELINE_TRAIN_PY, REPO_ROOT
from infra.store import Store, StoreError
from tests.conftest import record

BASELINE = BASELINE_TRAIN_PY.read_text()


# --- code edits ---------------------------------------------------------------


def test_tunable_constants_are_the_upper_case_numbers_and_bools():
    code = "A = 1\nB = -2.5\nC = True\nlower = 3\nD = 'text'\nE = [1]\nF, G = 1, 2\n"
    assert tunable_constants(code) == {"A": 1, "B": -2.5, "C": True}
    assert tunable_constants(BASELINE) == {"LEARNING_RATE": 0.1, "BATCH_SIZE": 32, "MOMENTUM": 0.0, "WEIGHT_DECAY": 0.0}


def test_set_constants_keeps_everything_else_byte_identical():
    code = "X = 1  # keep this comment\nY = -0.5\n\nprint(X, Y)\n"
    new = set_constants(code, {"X": 7, "Y": 0.25})
    assert new == "X = 7  # keep this comment\nY = 0.25\n\nprint(X, Y)\n"
    with pytest.raises(KeyError):
        set_constants(code, {"Z": 1})


def test_classify_change():
    assert classify_change(BASELINE, "# another first comment\n" + BASELINE) == "none"
    assert classify_change(BASELINE, set_constants(BASELINE, {"LEARNING_RATE": 0.05})) == "parametric"
    assert classify_change(BASELINE, BASELINE.replace("torch.optim.SGD", "torch.optim.Adam")) == "structural"
    assert "-LEARNING_RATE = 0.1" in unified_diff(BASELINE, set_constants(BASELINE, {"LEARNING_RATE": 0.05}))


# --- offline proposer -----------------------------------------------------------


def ctx(iteration: int, history=None, strategy: str = "", code: str = BASELINE) -> ProposalContext:
    return ProposalContext(iteration=iteration, incumbent_code=code, strategy=strategy, history=history or [], seed=1)


def test_offline_proposals_are_valid_single_constant_edits_and_reproducible():
    proposer = OfflineProposer()
    seen = set()
    for i in range(1, 40):
        p = proposer.propose(ctx(i))
        ast.parse(p.code)
        before, after = tunable_constants(BASELINE), tunable_constants(p.code)
        changed = [k for k in before if before[k] != after[k]]
        assert len(changed) == 1 and p.hypothesis.startswith(f"Set {changed[0]} from ")
        assert p.change_type == "parametric"
        assert proposer.propose(ctx(i)).code == p.code  # same iteration, same proposal (resume)
        seen.add(changed[0])
    assert seen == set(tunable_constants(BASELINE))


def test_offline_step_size_follows_the_one_fifth_rule():
    def outcome(verdict):
        return record(
            1,
            hypothesis="Set LEARNING_RATE from 0.1 to 0.2",
            verdict=verdict,
            decision=DecisionRecord(delta=0.01),
            memory={"constant": "LEARNING_RATE", "old": 0.1, "new": 0.2},
        )

    start = step_sizes([])["LEARNING_RATE"]
    assert step_sizes([outcome("keep")])["LEARNING_RATE"] == pytest.approx(start * 1.5)
    assert step_sizes([outcome("discard")] * 4)["LEARNING_RATE"] == pytest.approx(start / 1.5)
    steady = [outcome("keep")] + [outcome("discard")] * 4  # one in five succeeds: unchanged
    assert step_sizes(steady)["LEARNING_RATE"] == pytest.approx(start)


def test_offline_strategy_revision_shifts_the_search_distribution():
    history = [
        record(
            k,
            hypothesis="Set BATCH_SIZE from 32 to 64",
            verdict=Verdict.DISCARD,
            decision=DecisionRecord(delta=-0.01),
            memory={"constant": "BATCH_SIZE", "old": 32, "new": 64},
        )
        for k in range(1, 5)
    ]
    history.append(
        record(
            5,
            hypothesis="Set LEARNING_RATE from 0.1 to 0.2",
            verdict=Verdict.KEEP,
            decision=DecisionRecord(delta=0.02),
            memory={"constant": "LEARNING_RATE", "old": 0.1, "new": 0.2},
        )
    )
    revision = OfflineProposer().revise_strategy(ctx(6, history))
    text, lessons = revision.strategy, revision.lessons
    assert revision.calls == []  # no language model, no calls
    search = parse_search_block(text)
    assert search["weights"]["LEARNING_RATE"] > search["weights"]["MOMENTUM"] > search["weights"]["BATCH_SIZE"]
    assert search["p_up"]["LEARNING_RATE"] > 0.5 and search["p_up"]["BATCH_SIZE"] < 0.5
    assert "LEARNING_RATE: kept 1 of 1" in lessons and "BATCH_SIZE: 4 changes, none beat the noise" in lessons
    # the next proposals use it: LEARNING_RATE is now tried far more often than BATCH_SIZE
    picks = [OfflineProposer().propose(ctx(i, history, text)).hypothesis.split()[1] for i in range(6, 106)]
    assert picks.count("LEARNING_RATE") > 2 * picks.count("BATCH_SIZE")


def test_replay_proposer_in_name_order_with_first_comment_as_hypothesis(tmp_path):
    (tmp_path / "02_b.py").write_text("# second idea\n" + BASELINE)
    (tmp_path / "01_a.py").write_text(
        "# first idea: smaller learning rate\n" + set_constants(BASELINE, {"LEARNING_RATE": 0.05})
    )
    proposer = ReplayProposer(tmp_path)
    first, second = proposer.propose(ctx(1)), proposer.propose(ctx(2))
    assert first.hypothesis == "first idea: smaller learning rate" and first.change_type == "parametric"
    assert second.hypothesis == "second idea" and second.change_type == "none"
    assert proposer.propose(ctx(3)) is None


def test_proposer_specs(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert resolve_spec("auto")[0] == "offline" and "falling back to the offline" in resolve_spec("auto")[1]
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    assert resolve_spec("auto")[0] == "claude"
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(ProposerError, match="ANTHROPIC_API_KEY"):
        resolve_spec("claude")
    with pytest.raises(ProposerError, match="unknown proposer 'gpt5'"):
        resolve_spec("gpt5")
    with pytest.raises(ProposerError, match="replay directory not found"):
        resolve_spec(f"replay:{tmp_path / 'missing'}")
    (tmp_path / "a.py").write_text(BASELINE)
    with pytest.raises(ProposerError, match="takes no argument"):
        resolve_spec("offline:fast")
    with pytest.raises(ProposerError, match="replay directory not found"):
        resolve_spec("replay:")
    assert is_language_model("claude") and not is_language_model(f"replay:{tmp_path}")
    spec, _ = resolve_spec(f"replay:{tmp_path}")
    assert isinstance(make_proposer(spec), ReplayProposer)


# --- program.md -----------------------------------------------------------------


def test_program_strategy_section_is_the_only_part_rewritten(tmp_path):
    program = read_program(REPO_ROOT / "program.md")
    new = with_strategy(program, "Try Adam.\n\nThen a CNN.")
    assert strategy_of(new) == "Try Adam.\n\nThen a CNN."
    assert new.split("## Strategy")[0] == program.split("## Strategy")[0]
    bad = tmp_path / "program.md"
    bad.write_text("# no strategy here\n")
    with pytest.raises(ProgramError, match="no '## Strategy' section"):
        read_program(bad)
    with pytest.raises(ProgramError, match="cannot read"):
        read_program(tmp_path / "missing.md")


# --- lock -------------------------------------------------------------------------


def test_lock_refuses_a_second_live_run_and_recovers_from_a_killed_one(tmp_path):
    with experiment_lock(tmp_path / "exp"):
        assert f"pid {os.getpid()}" in lock_holder(tmp_path / "exp")
        with pytest.raises(LockHeld, match="already running"):
            with experiment_lock(tmp_path / "exp"):
                pass
    assert lock_holder(tmp_path / "exp") is None
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import time, pathlib; from infra.research.lock import experiment_lock\n"
                f"with experiment_lock(pathlib.Path({str(tmp_path / 'exp')!r})):\n"
                "    print('held', flush=True); time.sleep(60)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    assert holder.stdout.readline().strip() == "held"
    assert lock_holder(tmp_path / "exp") is not None
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with experiment_lock(tmp_path / "exp"):  # the stale lock is simply free
        pass


# --- store --------------------------------------------------------------------------


def test_store_writes_are_idempotent_per_iteration(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    exp = store.ensure_experiment("e1", {"budget_s": 5})
    assert store.ensure_experiment("e1", {"budget_s": 5}).id == exp.id
    store.put_iteration(exp.id, 1, status="running", hypothesis="h")
    store.put_iteration(
        exp.id,
        1,
        status="ok",
        val_accuracy=0.8,
        measurements=[0.8],
        verdict="discard",
        decision={"delta": -0.01},
        finished_at=None,
    )
    rows = store.iterations(exp.id)
    assert len(rows) == 1 and rows[0].status == "ok" and rows[0].hypothesis == "h"
    record_0 = store.records(exp.id)[0]
    assert record_0.decision == DecisionRecord(delta=-0.01) and record_0.verdict == Verdict.DISCARD
    assert store.iterations(exp.id, finished_only=True) == []
    store.add_strategy(exp.id, 0, 0, "s0")
    store.add_strategy(exp.id, 0, 0, "s0 again")
    assert [s.text for s in store.strategies(exp.id)] == ["s0"]
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0011"
    # a second Store on the same file migrates nothing and sees the same data
    assert len(Store(f"sqlite:///{tmp_path / 'a.db'}").iterations(exp.id)) == 1


@pytest.mark.parametrize(
    "url", ["notadb://nowhere", "sqlite:////proc/no/such/dir/x.db", "postgresql://u:p@127.0.0.1:1/db"]
)
def test_store_that_cannot_open_raises_clearly(url):
    with pytest.raises(StoreError, match="cannot open results store"):
        Store(url)


# --- workspace ------------------------------------------------------------------------


def test_workspace_commits_keeps_once_with_trailers(tmp_path):
    ws = Workspace(tmp_path / "exp")
    ws.ensure(BASELINE, "# P\n\n## Strategy\n\nx\n")
    ws.ensure(BASELINE, "# P\n\n## Strategy\n\nx\n")
    assert ws.committed_iterations() == [0]
    better = set_constants(BASELINE, {"LEARNING_RATE": 0.05})
    ws.commit_keep(3, "smaller lr", 0.83, 0.85, better)
    ws.commit_keep(3, "smaller lr", 0.83, 0.85, better)
    assert ws.committed_iterations() == [0, 3]
    assert ws.train_py.read_text() == better
    log = ws.git("log", "-p", "-1")
    assert "Iteration 3: smaller lr" in log and "val_accuracy 0.8300 -> 0.8500 (+0.0200)" in log
    assert "-LEARNING_RATE = 0.1" in log


def test_a_store_from_before_run_records_upgrades_and_keeps_its_iterations(tmp_path):
    """Migrations 0003 and 0004 add iterations.runs, expected_effect and memory, 0009 renames decision and rule: an
    existing store upgrades in place; the offline searcher's old moves get their structured memory from their
    hypothesis, once."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    from infra.store import MIGRATIONS_DIR

    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, "0002")
    with create_engine(url).begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO experiments (name, config, status, created_at, updated_at) "
            "VALUES ('old', '{}', 'finished', '2026-11-01', '2026-11-01')"
        )
        conn.exec_driver_sql(
            'INSERT INTO iterations (experiment_id, "index", proposer, hypothesis, change_type, '
            "code, diff, status, reason, measurements, decision, rule, attempts, started_at) "
            "VALUES (1, 0, 'baseline', 'baseline', 'baseline', '', '', 'ok', '', '[0.8]', "
            "'baseline', '{}', '[]', '2026-11-01')"
        )
        conn.exec_driver_sql(
            'INSERT INTO iterations (experiment_id, "index", proposer, hypothesis, change_type, '
            "code, diff, status, reason, measurements, decision, rule, attempts, started_at) "
            "VALUES (1, 1, 'offline', 'Set USE_BIAS from True to False', 'parametric', '', '', "
            "'ok', '', '[0.79]', 'discard', '{\"delta\": -0.01}', '[]', '2026-11-01')"
        )
    store = Store(url)
    rows = store.iterations(store.experiment("old").id)
    assert [(r.index, r.status, r.measurements, r.runs) for r in rows] == [(0, "ok", [0.8], []), (1, "ok", [0.79], [])]
    records = store.records(store.experiment("old").id)
    assert [(r.memory, r.expected_effect) for r in records] == [
        ({}, ""),
        ({"constant": "USE_BIAS", "old": True, "new": False}, ""),
    ]
    assert step_sizes(records)["USE_BIAS"] < step_sizes([])["USE_BIAS"]  # the offline searcher reads it back
    # migration 0009 renamed the columns, not the data: the verdict and the decision read back as they were written
    assert [(r.verdict, r.decision) for r in records] == [
        (Verdict.BASELINE, DecisionRecord()),
        (Verdict.DISCARD, DecisionRecord(delta=-0.01)),
    ]


def test_a_store_from_before_measured_runs_gets_them_from_its_iterations(tmp_path):
    """Migration 0007: the runs an older store kept in iterations.runs become measured runs, numbered in iteration
    order, a contended attempt measured again with the same seed marked so: a resumed experiment's incumbent has
    its runs for the sequential rule."""
    import json

    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    from infra.store import MIGRATIONS_DIR

    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, "0006")
    runs = [
        {"seed": 5, "status": "ok", "val_accuracy": 0.80, "epochs": 3, "contended": True, "clock": "cpu"},
        {"seed": 5, "status": "ok", "val_accuracy": 0.83, "epochs": 4, "contended": False, "clock": "cpu"},
        {"seed": 9, "status": "ok", "val_accuracy": 0.84, "epochs": 4, "contended": False, "clock": "cpu"},
    ]
    with create_engine(url).begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO experiments (name, config, status, created_at, updated_at) "
            "VALUES ('old', '{}', 'finished', '2026-11-01', '2026-11-01')"
        )
        conn.exec_driver_sql(
            'INSERT INTO iterations (experiment_id, "index", proposer, hypothesis, change_type, '
            "code, diff, status, reason, measurements, decision, rule, attempts, runs, started_at) "
            "VALUES (1, 0, 'baseline', 'baseline', 'baseline', '', '', 'ok', '', '[0.83, 0.84]', "
            f"'baseline', '{{}}', '[]', '{json.dumps(runs)}', '2026-11-01')"
        )
    store = Store(url)
    measured = store.measured_runs(store.experiment("old").id)
    assert [(m.seq, m.iteration, m.seed, m.remeasured, m.score) for m in measured] == [
        (1, 0, 5, True, None),
        (2, 0, 5, False, 0.83),
        (3, 0, 9, False, 0.84),
    ]
    assert measured[0].compute == ComputeRecord("cpu", contended=True)  # an old record: the fields it has


def test_concurrent_writers_get_distinct_run_numbers(tmp_path):
    """The store numbers measured runs in the inserting transaction: two processes' worth of writers at once (two
    Store objects on one SQLite file, four threads) never share a number and leave no gap."""
    number_runs_concurrently(f"sqlite:///{tmp_path / 'runs.db'}")


def number_runs_concurrently(url: str) -> None:
    """Four writers on two Store objects store 60 runs: numbered 1..60 between them, each once (also on
    PostgreSQL: tests/test_postgres.py)."""
    import threading

    from infra.records import MeasuredRun, Status

    stores = [Store(url), Store(url)]
    exp = stores[0].ensure_experiment("busy", {})
    made: list[int] = []

    def write(store: Store, iteration: int) -> None:
        for k in range(15):
            run = MeasuredRun(
                seq=0, iteration=iteration, decided_in=iteration, seed=k, status=Status.OK, val_accuracy=0.5
            )
            made.append(store.add_measured_run(exp.id, run).seq)

    threads = [threading.Thread(target=write, args=(stores[n % 2], n)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(made) == list(range(1, 61))
    assert [m.seq for m in stores[1].measured_runs(exp.id)] == list(range(1, 61))
    with pytest.raises(TypeError):
        MeasuredRun(seq=0, iteration=1, decided_in=1, seed=1, status=Status.OK, val_accuracy=0.5, loss=1.0)


def test_concurrent_writers_get_distinct_iteration_numbers(tmp_path):
    """Iterations too are numbered by the store, in the inserting transaction: four writers on two Store objects
    get 1..40 between them, each once, and every row keeps the fields it was written with."""
    number_iterations_concurrently(f"sqlite:///{tmp_path / 'iterations.db'}")


def number_iterations_concurrently(url: str) -> None:
    import threading

    stores = [Store(url), Store(url)]
    exp = stores[0].ensure_experiment("busy", {})
    stores[0].put_iteration(exp.id, 0, hypothesis="baseline")
    made: list[tuple[int, str]] = []

    def write(store: Store, writer: int) -> None:
        for k in range(10):
            row = store.add_iteration(exp.id, hypothesis=f"writer {writer} move {k}")
            made.append((row.index, row.hypothesis))

    threads = [threading.Thread(target=write, args=(stores[n % 2], n)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(index for index, _ in made) == list(range(1, 41))
    assert {(r.index, r.hypothesis) for r in stores[1].iterations(exp.id) if r.index} == set(made)


def test_offline_proposer_does_not_propose_a_move_being_measured():
    from infra.proposers import InFlight

    proposer = OfflineProposer()
    first = proposer.propose(ctx(7))
    again = proposer.propose(replace(ctx(7), in_flight=[InFlight(6, first.hypothesis, first.change_type, first.code)]))
    assert again.code != first.code and classify_change(BASELINE, again.code) == "parametric"
    assert proposer.propose(ctx(7)).code == first.code, "without it in flight, the same iteration proposes the same"


def test_a_store_write_refuses_a_field_that_is_not_a_column(tmp_path):
    """A misspelt field would otherwise be set on the ORM object and silently never stored."""
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    exp = store.ensure_experiment("typo", {})
    store.put_iteration(exp.id, 0, status="ok", val_accuracy=0.8)
    with pytest.raises(StoreError, match="not a column of iterations: val_acuracy"):
        store.put_iteration(exp.id, 0, val_acuracy=0.9)
    with pytest.raises(StoreError, match="not a column of iterations: hypotesis"):
        store.add_iteration(exp.id, hypotesis="typo")
    with pytest.raises(StoreError, match="not a column of experiments: stauts"):
        store.set_experiment(exp.id, stauts="finished")
    assert [(r.iteration, r.val_accuracy) for r in store.records(exp.id)] == [(0, 0.8)]  # nothing half-written


def test_opening_the_store_again_keeps_the_locks_sqlite_holds_on_its_file(tmp_path):
    """Closing any descriptor of a file drops every POSIX lock the process holds on it. A Store that opened the
    database file to check it, beside a connection of this process, dropped SQLite's shared lock: another process
    (a pool's worker) then checkpointed and removed the write-ahead log under that connection, which read 'file is
    not a database' (seen in benchmarks/throughput.py --pool)."""
    url = f"sqlite:///{tmp_path / 'a.db'}"
    first = Store(url)
    with first.engine.connect() as held:
        held.exec_driver_sql("SELECT count(*) FROM experiments").all()
        Store(url)
        probe = (
            "import fcntl, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "try:\n"
            "    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 510, 0x40000002)  # SQLite's shared-lock bytes\n"
            "    print('free')\n"
            "except OSError:\n"
            "    print('held')\n"
        )
        done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "a.db")], capture_output=True, text=True)
        assert done.stdout.strip() == "held", done
