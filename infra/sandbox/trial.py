"""
One trial: a candidate train.py through the sandbox, then independent evaluation.

A run directory belongs to the orchestrator; the candidate can write only work/ inside it, and
nothing the orchestrator reads or writes is in work/ (infra/sandbox/safe_files.py):

    train.py            the candidate's code, as proposed
    train.log           its output, written here by the orchestrator (bounded: infra/sandbox/output_capture.py)
    model.safetensors   its saved model, copied out of work/ after it exited (a regular file, bounded size)
    eval/, test-eval/   the evaluation processes' inputs, outputs and logs (infra/sandbox/evaluation.py)
    work/               the candidate's working directory, its only writable place; deleted after the run
    data/train.pt       the training split, written fresh for this run, mounted read-only; deleted after

Statuses:
    ok       exited by itself before deadline + export allowance, saved a model, and the model was scored
    crashed  non-zero exit, killed by a signal, or over the memory or disk cap
    timeout  still running at its deadline + export allowance, so SIGKILLed
    invalid  not runnable Python, or no usable model (missing, not a regular file, malformed, wrong shape, NaN,
             inference over its allowance: infra/sandbox/evaluation.py)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

import prepare
from infra.records import Status
from infra.research.code_edit import syntax_error
from infra.sandbox.compute_record import ComputeRecord
from infra.sandbox.evaluation import evaluate_artifact, hidden_data_dirs
from infra.sandbox.identity import give_to_sandbox
from infra.sandbox.run import MAX_OPEN_FILES_SCANNED, SandboxJob, SandboxOutcome, run_sandboxed
from infra.sandbox.safe_files import UnsafeFile, copy_out, remove_tree, write_private
from infra.sandbox.slots import Slot
from infra.settings import MAX_ARTIFACT_BYTES, PREPARE_PY, Limits

MEMORY_ERROR_PATTERNS = (
    "MemoryError",
    "can't allocate memory",
    "Cannot allocate memory",
    "std::bad_alloc",
    "out of memory",
)
ERROR_LINE = re.compile(r"^(\w+(\.\w+)*(Error|Exception|Interrupt)|FAIL|Traceback|error)\b.*")
EPOCHS_LINE = re.compile(r"^epochs: ([0-9]{1,9})$", flags=re.MULTILINE | re.ASCII)


@dataclass
class TrialResult:
    status: Status
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
    compute: ComputeRecord | None = None  # what compute it received; None: it never reached training
    inference_seconds: float | None = None  # CPU s on one core its evaluation spent predicting (None: not evaluated)

    @property
    def contended(self) -> bool:
        """Measured under a load its budget could not make up for: to be run again, not compared."""
        return self.compute is not None and self.compute.contended

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def reported_epochs(log_text: str) -> int | None:
    """The last `epochs: N` line train.py printed (informational; ASCII digits only, bounded)."""
    found = EPOCHS_LINE.findall(log_text)
    return int(found[-1]) if found else None


def read_log(log_path: str | Path) -> str:
    """A log the orchestrator wrote (bounded by infra/sandbox/output_capture.py), or '' if there is none."""
    path = Path(log_path)
    return path.read_text(errors="replace") if path.is_file() and not path.is_symlink() else ""


def log_tail(log_path: str | Path, lines: int = 15, traceback_lines: int = 60) -> str:
    """The last lines of a log; if it ends in a traceback, the whole traceback (up to traceback_lines)."""
    text = read_log(log_path).splitlines()
    starts = [n for n, line in enumerate(text) if line.startswith("Traceback (most recent call last)")]
    if starts and len(text) - starts[-1] <= traceback_lines:
        return "\n".join(text[starts[-1] :])
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


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def fresh_run_dir(code: str, run_dir: Path) -> Path:
    """The orchestrator's run directory, empty but for the code; returns work/, given to the sandbox user."""
    remove_tree(run_dir)  # an interrupted attempt is re-run from scratch
    run_dir.mkdir(parents=True, mode=0o755)
    write_private(run_dir / "train.py", code.encode(), 0o644)
    work = run_dir / "work"
    work.mkdir(mode=0o755)
    write_private(work / "train.py", code.encode(), 0o644)
    give_to_sandbox(work)
    return work


def train_job(
    run_dir: Path, limits: Limits, seed: int, split_file: Path, device: str | None, slot: Slot | None = None
) -> SandboxJob:
    """The sandbox job of a training run; in a GPU slot, on that slot's GPU alone (cuda:0 inside)."""
    work = run_dir / "work"
    env = {
        prepare.BUDGET_ENV: f"{limits.budget_s:g}",
        prepare.SEED_ENV: str(seed),
        prepare.ARTIFACT_DIR_ENV: str(work),
        prepare.TRAIN_SPLIT_ENV: str(split_file),
        "PYTHONPATH": str(PREPARE_PY.parent),  # only prepare.py is mounted from there
    }
    device = slot.device if slot is not None and slot.gpu is not None else device
    if device:
        env[prepare.DEVICE_ENV] = device
    gpu = (device or "").startswith(("cuda", "mps")) or (device is None and torch.cuda.is_available())
    return SandboxJob(
        argv=[sys.executable, "train.py"],
        workdir=work,
        log_path=run_dir / "train.log",
        limits=limits,
        env=env,
        deadline_env=prepare.DEADLINE_ENV,
        ro_paths=[PREPARE_PY, split_file],
        hidden=hidden_data_dirs(),
        cap_address_space=not gpu,
        gpu=gpu,
        cpu_clock=not gpu,  # a GPU is the candidate's alone: its clock is the wall
        slot=slot,
    )


def _failure_status(outcome: SandboxOutcome, log_text: str, limits: Limits) -> tuple[Status, str] | None:
    if outcome.killed_for == "timeout":
        return Status.TIMEOUT, _timeout_reason(outcome, limits)
    if outcome.killed_for == "memory":
        return (
            Status.CRASHED,
            f"exceeded the memory cap of {_gib(limits.memory_cap_bytes)} (peak {_gib(outcome.peak_rss_bytes)}); killed",
        )
    if outcome.killed_for == "disk":
        return Status.CRASHED, (
            f"wrote more than the disk cap ({_gib(limits.disk_cap_bytes)} or {limits.max_files} files "
            "in its directory, or that much space held in deleted files); killed"
        )
    if outcome.killed_for == "open files":
        return (
            Status.CRASHED,
            f"held more than {MAX_OPEN_FILES_SCANNED} open files, more than the watchdog accounts for; killed",
        )
    if outcome.signal == signal.SIGXFSZ:
        return Status.CRASHED, f"wrote a file larger than the disk cap of {_gib(limits.disk_cap_bytes)} (SIGXFSZ)"
    if outcome.exit_code != 0:
        if any(p in log_text for p in MEMORY_ERROR_PATTERNS):
            return (
                Status.CRASHED,
                f"exceeded the memory cap of {_gib(limits.memory_cap_bytes)}: "
                f"{crash_reason(log_text, outcome.exit_code, outcome.signal)}",
            )
        return Status.CRASHED, crash_reason(log_text, outcome.exit_code, outcome.signal)
    return None


# what a run killed after its deadline must learn: the export allowance is for saving, not for training
EXPORT_ALLOWANCE_RULE = (
    "the export allowance is the time prepare.save_model needs for a reference CNN (measured), for "
    "saving and exiting only: training must be over by the deadline (prepare.TrainingBudget stops "
    "before it); if the export itself takes longer, stop training earlier or export a smaller model"
)


def _timeout_reason(outcome: SandboxOutcome, limits: Limits) -> str:
    compute = outcome.compute
    export = limits.export_allowance_s
    if compute.clock == "wall":
        return (
            f"killed (SIGKILL) after {outcome.wall_seconds:.1f} s: still running {export:g} s past its deadline "
            f"(start-up allowance {limits.startup_allowance_s:g} s + budget {limits.budget_s:g} s), the end of its "
            f"export allowance; {EXPORT_ALLOWANCE_RULE}"
        )
    if not outcome.stopped_by_wall_ceiling:
        return (
            f"killed (SIGKILL) after {compute.cpu_seconds:.1f} CPU s: still running {export:g} CPU s past its deadline "
            f"(start-up allowance {limits.startup_allowance_s:g} CPU s + budget {limits.budget_s:g} s on "
            f"{compute.threads} cores), the end of its export allowance; {EXPORT_ALLOWANCE_RULE}"
        )
    why = "kept waiting for a CPU by the machine's load" if compute.contended else "sleeping or blocked"
    return (
        f"killed (SIGKILL) at the wall-clock ceiling ({outcome.wall_seconds:.1f} s) after only "
        f"{compute.cpu_seconds:.1f} CPU s of its {outcome.cpu_limit_s:.1f}: {why} "
        f"({compute.core_share:.0%} of {compute.threads} cores, waited {compute.waiting_share:.0%})"
    )


def _result(
    status: Status, reason: str, run_dir: Path, started: float, outcome: SandboxOutcome | None = None
) -> TrialResult:
    log_path = run_dir / "train.log"
    return TrialResult(
        status=status,
        reason=reason,
        val_accuracy=None,
        val_loss=None,
        epochs=reported_epochs(read_log(log_path)),
        train_seconds=outcome.training_seconds if outcome else None,
        wall_seconds=time.monotonic() - started,
        peak_memory_bytes=outcome.peak_rss_bytes if outcome else 0,
        exit_code=outcome.exit_code if outcome else None,
        signal=outcome.signal if outcome else None,
        log_path=str(log_path),
        run_dir=str(run_dir),
        isolated=outcome.isolated if outcome else False,
        compute=outcome.compute if outcome else None,
    )


def _take_artifact(work: Path, run_dir: Path) -> str | None:
    """Copy the saved model out of work/; None if done, else why not."""
    try:
        copy_out(work, prepare.MODEL_ARTIFACT, run_dir / prepare.MODEL_ARTIFACT, MAX_ARTIFACT_BYTES)
    except UnsafeFile as exc:
        if str(exc) == f"no {prepare.MODEL_ARTIFACT}":
            return "no model saved: train.py must call prepare.save_model(model)"
        return f"model artifact rejected: {exc}"
    return None


def train_candidate(
    code: str,
    run_dir: Path,
    limits: Limits,
    seed: int = 0,
    device: str | None = None,
    on_line: Callable[[str], None] | None = None,
    split_limit: int | None = None,
    slot: Slot | None = None,
) -> TrialResult:
    """Train code in a sandbox under limits. Status ok here means: it exited in time and saved a model."""
    started = time.monotonic()
    run_dir = Path(os.path.abspath(run_dir))  # not resolve(): a link at the run path is removed, never followed
    work = fresh_run_dir(code, run_dir)
    problem = syntax_error(code)
    if problem:
        write_private(run_dir / "train.log", (problem + "\n").encode(), 0o644)
        _clean_up(work)
        return _result(Status.INVALID, problem, run_dir, started)
    try:
        split_file = prepare.write_train_split(run_dir / "data" / "train.pt", split_limit, order_seed=seed)
        split_file.chmod(0o444)
        prepare_hash = _file_hash(PREPARE_PY)
        outcome = run_sandboxed(train_job(run_dir, limits, seed, split_file, device, slot), on_line)
        failure = _failure_status(outcome, read_log(run_dir / "train.log"), limits)
        if failure:
            return _result(*failure, run_dir, started, outcome)
        if _file_hash(PREPARE_PY) != prepare_hash:
            return _result(
                Status.INVALID,
                "prepare.py was modified during the run; nothing from it is trusted",
                run_dir,
                started,
                outcome,
            )
        rejected = _take_artifact(work, run_dir)
        if rejected:
            return _result(Status.INVALID, rejected, run_dir, started, outcome)
        return _result(Status.OK, "trained", run_dir, started, outcome)
    finally:
        _clean_up(work, run_dir / "data")


def _clean_up(*paths: Path) -> None:
    """Remove what the run left; a failure here is reported, never allowed to replace the run's result."""
    for path in paths:
        try:
            remove_tree(path)
        except OSError as exc:
            print(f"WARNING: {exc}", file=sys.stderr, flush=True)


def score_artifact(
    run_dir: Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    limits: Limits,
    name: str = "eval",
    slot: Slot | None = None,
):
    """Evaluate the model a trial saved on (images, labels): validation, or the held-out test set, under the
    same inference allowance (limits.inference_allowance_s per INFERENCE_IMAGES images); in a slot, on its cores."""
    return evaluate_artifact(Path(run_dir) / prepare.MODEL_ARTIFACT, images, labels, Path(run_dir) / name, limits, slot)


def score_trial(
    trained: TrialResult, val: tuple[torch.Tensor, torch.Tensor], limits: Limits, slot: Slot | None = None
) -> TrialResult:
    """Fill in validation accuracy and loss from independent evaluation; a bad model becomes invalid."""
    if trained.status != Status.OK:
        return trained
    started = time.monotonic()
    evaluation = score_artifact(Path(trained.run_dir), *val, limits, slot=slot)
    wall = trained.wall_seconds + time.monotonic() - started
    measured = replace(trained, wall_seconds=wall, inference_seconds=evaluation.inference_seconds)
    if not evaluation.ok:
        return replace(measured, status=Status.INVALID, reason=evaluation.reason)
    return replace(measured, reason="ok", val_accuracy=evaluation.accuracy, val_loss=evaluation.loss)


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
