"""`autoresearch train`: bad input, readable output, and one end-to-end run on the real data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from infra.settings import BASELINE_TRAIN_PY
from tests.conftest import requires_bwrap, requires_real_data

runner = CliRunner()
AUTORESEARCH = [sys.executable, "-m", "app.cli"]


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*AUTORESEARCH, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.py", "--budget", "5"], "no such file: missing.py"),
        ([str(BASELINE_TRAIN_PY), "--budget", "0"], "budget must be a positive number"),
        ([str(BASELINE_TRAIN_PY), "--budget", "-3"], "budget must be a positive number"),
        ([str(BASELINE_TRAIN_PY), "--budget", "5", "--device", "tpu"], "unknown device 'tpu'"),
        ([str(BASELINE_TRAIN_PY), "--budget", "5", "--memory-cap-gb", "0"], "--memory-cap-gb must be positive"),
    ],
)
def test_bad_input_exits_non_zero_with_clear_message(args, message, tmp_path):
    result = run_cli("train", *args, "--home", str(tmp_path))
    assert result.returncode == 2
    assert "error:" in result.stderr and message in " ".join(result.stderr.split())
    assert not (tmp_path / "scratch").exists()


def test_data_unavailable_exits_1_naming_the_three_ways(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.delenv("AUTORESEARCH_DATA_DIR")
    result = runner.invoke(app, ["train", str(BASELINE_TRAIN_PY), "--budget", "2", "--home", str(tmp_path)])
    assert result.exit_code == 1
    assert "Get it one of three ways" in result.output


@requires_bwrap
def test_readable_summary_on_synthetic_data(synthetic_data, tmp_path):
    result = runner.invoke(app, ["train", str(BASELINE_TRAIN_PY), "--budget", "2", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "status" in result.output and "ok" in result.output and "val_accuracy" in result.output
    assert "bubblewrap" in result.output
    assert len(list((tmp_path / "scratch").glob("*/train.log"))) == 1


def test_crashed_candidate_still_exits_0(synthetic_data, tmp_path):
    bad = tmp_path / "crash.py"
    bad.write_text("raise RuntimeError('boom')\n")
    result = runner.invoke(app, ["train", str(bad), "--budget", "2", "--json", "--home", str(tmp_path)])
    assert result.exit_code == 0
    record = json.loads(result.output)
    assert record["status"] == "crashed" and "RuntimeError: boom" in record["reason"]
    assert record["val_accuracy"] is None


@requires_real_data
@requires_bwrap
def test_baseline_end_to_end_on_real_data(tmp_path):
    budget = 5
    result = run_cli("train", str(BASELINE_TRAIN_PY), "--budget", str(budget), "--json", "--home", str(tmp_path))
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    for key in ("status", "reason", "val_accuracy", "val_loss", "epochs", "train_seconds", "wall_seconds", "log_path"):
        assert key in record
    assert record["status"] == "ok", record["reason"]
    # learned (chance is 0.10); the baseline recipe is heavy-tailed (0.761-0.846 over 6 seeds, measured when the
    # project began),
    # and each seed now has its own data order, so no single run can be held to the typical 0.84
    assert record["val_accuracy"] >= 0.70
    assert record["epochs"] >= 2
    # stops itself at an epoch boundary before its deadline (start-up allowance + budget), then exports:
    # well inside deadline + export allowance
    assert record["train_seconds"] <= budget + 10
    assert Path(record["log_path"]).is_file()


@requires_bwrap
def test_candidate_text_is_never_rich_markup(synthetic_data, tmp_path):
    """A crash reason (the candidate's own words) full of markup is printed as text, not interpreted."""
    bad = tmp_path / "markup.py"
    bad.write_text(
        "print('[link=https://evil.example/]click[/link] [blink]x[/blink]')\n"
        "raise RuntimeError('[/] [bold red]unbalanced[/bold')\n"
    )
    result = runner.invoke(
        app, ["train", str(bad), "--budget", "2", "--startup-allowance", "5", "--home", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "RuntimeError: [/] [bold red]unbalanced[/bold" in " ".join(result.output.split())
