"""`autoresearch run / history / status`: bad input fails at once, clearly, and loses nothing recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from infra.records import MeasuredRun, Status
from infra.research.lock import experiment_lock
from infra.sandbox.compute_record import ComputeRecord
from infra.settings import REPO_ROOT
from infra.store import Store, utcnow
from tests.conftest import requires_bwrap, requires_real_data


def cli(*args: str, home: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("PREFECT_API_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args, "--home", str(home)],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def recorded(tmp_path) -> Path:
    """A home whose store already holds an experiment with history: bad input must leave it intact."""
    home = tmp_path / "runs"
    store = Store(f"sqlite:///{home / 'autoresearch.db'}")
    exp = store.ensure_experiment("kept", {"budget_s": 5.0})
    got = ComputeRecord("cpu", 1, 9.8, 10.1, 0.97, 0.01, 1.0, 0.5, 0.6, False)
    starved = replace(got, core_share=0.2, waiting_share=0.8, contended=True)
    for seed, status, score, compute in [(0, "ok", 0.83, got), (1, "timeout", None, starved), (1, "ok", 0.831, got)]:
        run = MeasuredRun(0, 0, 0, seed, Status(status), score, contended=compute.contended, compute=compute)
        store.add_measured_run(exp.id, replace(run, remeasured=compute.contended))
    store.put_iteration(
        exp.id,
        0,
        status="ok",
        verdict="baseline",
        hypothesis="baseline",
        val_accuracy=0.83,
        measurements=[0.83, 0.831],
        finished_at=utcnow(),
    )
    store.put_iteration(
        exp.id,
        1,
        status="crashed",
        verdict="discard",
        hypothesis="bigger lr",
        expected_effect="+1 point",
        reason="ValueError: boom",
        finished_at=utcnow(),
    )
    return home


def history_json(home: Path, name: str = "kept") -> list[dict]:
    done = cli("history", name, "--json", home=home)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget", "0"], "--budget: Input should be greater than 0 (got 0.0)"),
        (["--budget", "-1"], "--budget: Input should be greater than 0 (got -1.0)"),
        (["--repeats", "0"], "--repeats: Input should be greater than or equal to 1 (got 0)"),
        (["--iterations", "-1"], "--iterations: Input should be greater than or equal to 0 (got -1)"),
        (["--max-cost", "0"], "--max-cost: Input should be greater than 0"),
        (["--proposer", "gpt5"], "unknown proposer 'gpt5'"),
        (["--proposer", "replay:/no/such/dir"], "replay directory not found"),
        (["--program", "/no/such/program.md"], "cannot read program file"),
        (["--db", "notadb://nowhere"], "cannot open results store"),
        (["--experiment", "../escape"], "invalid experiment name '../escape'"),
        (["--experiment", "a/b"], "invalid experiment name 'a/b'"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--proposer", "offline", "--sampler", "cmaes"], "--sampler goes with --proposer optuna"),
        (["--proposer", "optuna", "--sampler", "bayes"], "unknown Optuna sampler 'bayes'"),
        (["--pool", "a b"], "--pool: String should match pattern"),
        (["--pool", "lab"], "--pool lab: the workers need a Prefect server they can reach"),
        (["--local-slots", "1"], "--local-slots 1: goes with --pool"),
        (["--pool", "lab", "--local-slots", "-1"], "--local-slots: Input should be greater than or equal to 0"),
        (["--pool", "lab", "--local-slots", "4096"], "--local-slots: 4096 slots of 1 cores need 4096 cores"),
    ],
)
def test_bad_input_fails_clearly_and_loses_nothing(recorded, args, message):
    before = history_json(recorded)
    done = (
        cli("run", "--experiment", "kept", *args, home=recorded)
        if "--experiment" not in args
        else cli("run", *args, home=recorded)
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error:" in done.stderr and message in " ".join(done.stderr.split())
    assert history_json(recorded) == before
    assert not (recorded.parent / "escape").exists()


def test_claude_without_key_fails_at_once_and_auto_falls_back(recorded):
    env = {"ANTHROPIC_API_KEY": ""}
    done = cli("run", "--experiment", "kept", "--proposer", "claude", home=recorded, env=env)
    assert done.returncode == 2 and "ANTHROPIC_API_KEY" in done.stderr


def test_second_live_run_is_refused(recorded):
    before = history_json(recorded)
    with experiment_lock(recorded / "kept"):
        done = cli("run", "--experiment", "kept", "--budget", "5", home=recorded)
    assert done.returncode == 2
    assert "already running" in done.stderr and f"pid {os.getpid()}" in done.stderr
    assert history_json(recorded) == before


def test_unreadable_program_md(recorded, tmp_path):
    program = tmp_path / "program.md"
    program.write_text("# no strategy section\n")
    done = cli("run", "--experiment", "kept", "--program", str(program), home=recorded)
    assert done.returncode == 2 and "no '## Strategy' section" in " ".join(done.stderr.split())
    program.write_bytes(b"\xff\xfe not utf-8 \xff")
    done = cli("run", "--experiment", "kept", "--program", str(program), home=recorded)
    assert done.returncode == 2 and "cannot read program file" in " ".join(done.stderr.split())


def test_history_and_status_read_the_store(recorded):
    rows = history_json(recorded)
    assert [(r["iteration"], r["status"], r["verdict"]) for r in rows] == [
        (0, "ok", "baseline"),
        (1, "crashed", "discard"),
    ]
    assert rows[1]["hypothesis"] == "bigger lr" and rows[0]["val_accuracy"] == pytest.approx(0.83)
    assert [r["contended"] for r in rows[0]["runs"]] == [False, True, False] and rows[1]["runs"] == []
    table = cli("history", "kept", home=recorded, env={"COLUMNS": "200"})
    assert table.returncode == 0 and "bigger lr (expects: +1 point) [ValueError: boom]" in table.stdout
    assert rows[1]["expected_effect"] == "+1 point"
    assert "97% 20%! 97%" in table.stdout, table.stdout  # each run's share of its cores; ! marks the contended one
    status = cli("status", home=recorded)
    assert status.returncode == 0 and "kept" in status.stdout
    missing = cli("history", "nope", home=recorded)
    assert missing.returncode == 1 and "no experiment named 'nope'" in missing.stderr


@requires_real_data
@requires_bwrap
@pytest.mark.process_driven
def test_offline_demo_end_to_end(tmp_path):
    """The issue's own command: `autoresearch run --experiment demo --iterations 3 --budget 5 --proposer offline`."""
    home = tmp_path / "runs"
    done = cli(
        "run",
        "--experiment",
        "demo",
        "--iterations",
        "3",
        "--budget",
        "5",
        "--proposer",
        "offline",
        home=home,
        env={"PREFECT_HOME": str(tmp_path / "prefect")},
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "offline parametric searcher" in done.stdout
    rows = history_json(home, "demo")
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["verdict"] == "baseline" and len(rows[0]["measurements"]) == 2
    for r in rows:
        assert r["status"] in ("ok", "crashed", "timeout", "invalid")
        assert r["verdict"] in ("baseline", "keep", "discard")
        assert r["finished"]
    for r in rows[1:]:
        assert r["hypothesis"].startswith("Set ") and r["change_type"] == "parametric"
        if r["status"] == "ok":
            assert {"delta", "sure", "sigma", "summary"} <= set(r["decision"])
    assert rows[0]["test_accuracy"] is not None  # held out, reported, never used to decide


def test_an_experiment_on_a_pool_resumes_there_and_needs_its_server(recorded):
    """Resumed without --pool, an experiment that ran on a pool goes on there (a fixed setting): without a Prefect
    server its workers can reach, it is refused before anything runs."""
    store = Store(f"sqlite:///{recorded / 'autoresearch.db'}")
    store.set_experiment(store.experiment("kept").id, config={"budget_s": 5.0, "pool": "lab"})
    before = history_json(recorded)
    done = cli("run", "--experiment", "kept", home=recorded)
    assert done.returncode == 2 and "--pool lab: the workers need a Prefect server" in " ".join(done.stderr.split())
    assert history_json(recorded) == before
