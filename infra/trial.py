"""
One trial: a candidate train.py through the sandbox, then independent evaluation.

Statuses:
    ok       trained, saved a model, and the model was scored
    crashed  non-zero exit, killed by a signal, or over the memory cap
    timeout  still running at budget + start-up allowance + grace, so SIGKILLed
    invalid  not runnable Python, or no usable model (missing, malformed, wrong shape, NaN)
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

import prepare
from infra.evaluation import evaluate_artifact, hidden_data_dirs
from infra.sandbox import SandboxJob, SandboxOutcome, run_sandboxed
from infra.settings import PREPARE_PY, Limits

MEMORY_ERROR_PATTERNS = ("MemoryError", "can't allocate memory", "Cannot allocate memory", "std::bad_alloc", "out of memory")
ERROR_LINE = re.compile(r"^(\w+(\.\w+)*(Error|Exception|Interrupt)|FAIL|Traceback|error)\b.*")


@dataclass
class TrialResult:
    status: str
    reason: str
    val_accuracy: float | None
    val_loss: float | None
    epochs: int | None
    train_seconds: float | None
    wall_seconds: float
    peak_memory_bytes: int
    exit_code: int | None
    signal: int | None
    log_path: str
    run_dir: str
    isolated: bool

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def syntax_error(code: str) -> str | None:
    try:
        compile(code, "train.py", "exec")
    except SyntaxError as exc:
        return f"syntax error at line {exc.lineno}: {exc.msg}"
    return None


def reported(log_text: str, key: str) -> str | None:
    """The last `key: value` line train.py printed (informational only)."""
    found = re.findall(rf"^{re.escape(key)}:\s*(\S+)", log_text, flags=re.MULTILINE)
    return found[-1] if found else None


def log_tail(log_path: str | Path, lines: int = 15, traceback_lines: int = 60) -> str:
    """The last lines of a log; if it ends in a traceback, the whole traceback (up to traceback_lines)."""
    path = Path(log_path)
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    starts = [n for n, line in enumerate(text) if line.startswith("Traceback (most recent call last)")]
    if starts and len(text) - starts[-1] <= traceback_lines:
        return "\n".join(text[starts[-1]:])
    return "\n".join(text[-lines:])


def crash_reason(log_text: str, exit_code: int | None, signal: int | None) -> str:
    """The candidate's own last error line, or how it died."""
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if ERROR_LINE.match(line) and not line.startswith("Traceback"):
            return line[:300]
    how = f"exit code {exit_code}" if signal is None else f"signal {signal}"
    tail = f"; last output: {lines[-1][:200]}" if lines else ""
    return f"train.py ended with {how}{tail}"


PREFLIGHT_IMAGES = 2000


def train_split_file(limit: int | None = None) -> Path:
    """The training split alone (or its first `limit` images), written once: the only data a sandbox can see."""
    name = f"train-{prepare.SPLIT_SEED}" + (f"-first{limit}" if limit else "") + ".pt"
    return prepare.write_train_split(prepare.cache_dir() / "splits" / name, limit)


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _prepare_run_dir(code: str, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "train.py").write_text(code)
    dest = run_dir / "prepare.py"
    if dest.exists():
        dest.chmod(0o644)
    shutil.copyfile(PREPARE_PY, dest)
    dest.chmod(0o444)
    for stale in prepare.MODEL_ARTIFACTS:
        (run_dir / stale).unlink(missing_ok=True)


def _train_job(run_dir: Path, limits: Limits, seed: int, split_file: Path, device: str | None) -> SandboxJob:
    env = {
        prepare.BUDGET_ENV: f"{limits.budget_s:g}",
        "AUTORESEARCH_SEED": str(seed),
        prepare.ARTIFACT_DIR_ENV: str(run_dir),
    }
    if device:
        env["AUTORESEARCH_DEVICE"] = device
    gpu = (device or "").startswith("cuda") or (device is None and torch.cuda.is_available())
    env[prepare.TRAIN_SPLIT_ENV] = str(split_file)
    return SandboxJob(
        argv=[sys.executable, "train.py"],
        workdir=run_dir,
        log_path=run_dir / "train.log",
        startup_allowance_s=limits.startup_allowance_s,
        budget_s=limits.budget_s,
        grace_s=limits.grace_s,
        memory_cap_bytes=limits.memory_cap_bytes,
        env=env,
        ro_paths=[run_dir / "prepare.py", split_file],
        hidden=hidden_data_dirs(),
        cap_address_space=not gpu,
        gpu=gpu,
    )


def _failure_status(outcome: SandboxOutcome, log_text: str, limits: Limits) -> tuple[str, str] | None:
    if outcome.killed_for == "timeout":
        return "timeout", (
            f"killed (SIGKILL) after {outcome.wall_seconds:.1f} s: still running past budget {limits.budget_s:g} s "
            f"+ grace {limits.grace_s:g} s (start-up allowance {limits.startup_allowance_s:g} s)"
        )
    if outcome.killed_for == "memory":
        return "crashed", f"exceeded the memory cap of {_gib(limits.memory_cap_bytes)} (peak {_gib(outcome.peak_rss_bytes)}); killed"
    if outcome.exit_code != 0:
        if any(p in log_text for p in MEMORY_ERROR_PATTERNS):
            return "crashed", f"exceeded the memory cap of {_gib(limits.memory_cap_bytes)}: {crash_reason(log_text, outcome.exit_code, outcome.signal)}"
        return "crashed", crash_reason(log_text, outcome.exit_code, outcome.signal)
    return None


def _result(status: str, reason: str, run_dir: Path, started: float, outcome: SandboxOutcome | None = None) -> TrialResult:
    log_path = run_dir / "train.log"
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    epochs = reported(text, "epochs")
    return TrialResult(
        status=status,
        reason=reason,
        val_accuracy=None,
        val_loss=None,
        epochs=int(epochs) if epochs and epochs.isdigit() else None,
        train_seconds=outcome.training_seconds if outcome else None,
        wall_seconds=time.monotonic() - started,
        peak_memory_bytes=outcome.peak_rss_bytes if outcome else 0,
        exit_code=outcome.exit_code if outcome else None,
        signal=outcome.signal if outcome else None,
        log_path=str(log_path),
        run_dir=str(run_dir),
        isolated=outcome.isolated if outcome else False,
    )


def train_candidate(
    code: str,
    run_dir: Path,
    limits: Limits,
    seed: int = 0,
    device: str | None = None,
    on_line: Callable[[str], None] | None = None,
    split_file: Path | None = None,
) -> TrialResult:
    """Train code in a sandbox under limits. Status ok here means: it exited cleanly and saved a model."""
    started = time.monotonic()
    run_dir = Path(run_dir).resolve()
    problem = syntax_error(code)
    _prepare_run_dir(code, run_dir)
    if problem:
        (run_dir / "train.log").write_text(problem + "\n")
        return _result("invalid", problem, run_dir, started)
    prepare_hash = _file_hash(PREPARE_PY)
    outcome = run_sandboxed(_train_job(run_dir, limits, seed, split_file or train_split_file(), device), on_line)
    failure = _failure_status(outcome, (run_dir / "train.log").read_text(errors="replace"), limits)
    if failure:
        return _result(*failure, run_dir, started, outcome)
    if _file_hash(PREPARE_PY) != prepare_hash:
        return _result("invalid", "prepare.py was modified during the run; nothing from it is trusted", run_dir, started, outcome)
    if prepare.find_artifact(run_dir) is None:
        return _result("invalid", "no model saved: train.py must call prepare.save_model(model)", run_dir, started, outcome)
    return _result("ok", "trained", run_dir, started, outcome)


def score_artifact(run_dir: Path, images: torch.Tensor, labels: torch.Tensor, limits: Limits, name: str = "eval"):
    """Evaluate the model a trial saved on (images, labels): validation, or the held-out test set."""
    return evaluate_artifact(prepare.find_artifact(run_dir), images, labels, Path(run_dir) / name, limits)


def score_trial(trained: TrialResult, val: tuple[torch.Tensor, torch.Tensor], limits: Limits) -> TrialResult:
    """Fill in validation accuracy and loss from independent evaluation; a bad model becomes invalid."""
    if trained.status != "ok":
        return trained
    started = time.monotonic()
    evaluation = score_artifact(Path(trained.run_dir), *val, limits)
    wall = trained.wall_seconds + time.monotonic() - started
    if not evaluation.ok:
        return replace(trained, status="invalid", reason=evaluation.reason, wall_seconds=wall)
    return replace(trained, reason="ok", val_accuracy=evaluation.accuracy, val_loss=evaluation.loss, wall_seconds=wall)


def run_trial(
    code: str,
    run_dir: Path,
    limits: Limits,
    seed: int = 0,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    device: str | None = None,
    on_line: Callable[[str], None] | None = None,
) -> TrialResult:
    """Train code in a sandbox under limits, then score its saved model on the validation split."""
    trained = train_candidate(code, run_dir, limits, seed, device, on_line)
    return score_trial(trained, val if val is not None else prepare.load_split_uint8("val"), limits)
