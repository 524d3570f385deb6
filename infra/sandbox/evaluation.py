"""
Independent evaluation: the metric no candidate can fake.

A separate, sandboxed process runs prepare.py's fixed `predict` on the candidate's artifact (a format
without code: prepare.load_artifact) and on images it is given without labels, and writes logits into
the one directory it may write. Only this orchestrator holds the labels; it takes the logits file as
untrusted data (infra/sandbox/safe_files.py), checks dtype, shape and finiteness, and computes accuracy and
loss itself.

Inference is budgeted, like training: otherwise a model could buy accuracy with compute at evaluation
time (a kNN over the stored training images, with no training at all, scored 0.86). The process runs on
the CPU clock of one allotted core. prepare.py prints its marker (prepare.PREDICT_MARKER) once the
artifact and the images are loaded, and the orchestrator reads the run's CPU time when that line arrives
(infra/sandbox/run.py), so inference seconds = CPU seconds from the marker to exit (predicting and
writing the logits), measured from outside to within the reader thread's wake-up. More than
Limits.inference_allowance_s per INFERENCE_IMAGES images makes the model `invalid`, with the seconds in
the reason. The kill comes at EVAL_STARTUP_CAP_S (loading: fixed code that never runs the model) + the
allowance for these images, or at the wall ceiling (infra/sandbox/watchdog.py).

    <eval dir>/images.npy     the images, written by the orchestrator, mounted read-only
    <eval dir>/model.safetensors  a read-only copy of the artifact, mounted read-only
    <eval dir>/eval.log       the process's output, written by the orchestrator
    <eval dir>/out/           the process's only writable directory (logits.npy); deleted after reading
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import prepare
from infra.sandbox.identity import give_to_sandbox
from infra.sandbox.run import SandboxJob, SandboxOutcome, run_sandboxed
from infra.sandbox.safe_files import UnsafeFile, read_untrusted, remove_tree, write_private
from infra.sandbox.slots import Slot
from infra.settings import INFERENCE_IMAGES, PREPARE_PY, Limits

EVAL_ERROR_PREFIX = "eval_error:"
SYSTEM_DATASETS_DIR = Path("/usr/share/datasets")  # Debian's datasets, whatever prepare.DEBIAN_DIR says
# CPU seconds before the marker: the interpreter, torch's import and loading the model (1.4-1.7 CPU s on the 2-core
# machine, a 154 MB kNN included; at most 256 MiB); no candidate code runs there, so this bounds a broken machine.
EVAL_STARTUP_CAP_S = 20.0


@dataclass
class Evaluation:
    ok: bool
    reason: str
    accuracy: float | None = None
    loss: float | None = None
    inference_seconds: float | None = None  # CPU s on one core from prepare.PREDICT_MARKER to exit (None: not reached)


def hidden_data_dirs() -> list[Path]:
    """Every place the data may sit on the host; the sandbox hides each one that it would otherwise show."""
    dirs = [prepare.cache_dir(), prepare.DEBIAN_DIR, SYSTEM_DATASETS_DIR]
    if os.environ.get(prepare.DATA_DIR_ENV):
        dirs.append(Path(os.environ[prepare.DATA_DIR_ENV]))
    return dirs


def score_logits(logits: np.ndarray, labels: torch.Tensor) -> Evaluation:
    """Check the model's output and compute accuracy and mean cross-entropy against labels."""
    expected = (len(labels), prepare.NUM_CLASSES)
    if logits.ndim != 2 or tuple(logits.shape) != expected:  # the shape unquoted: it can depend on the pixels
        return Evaluation(False, f"wrong output shape: expected {expected} (images, classes)")
    if logits.dtype.kind != "f":
        return Evaluation(False, f"predictions are {logits.dtype}, not floating point")
    if not np.isfinite(logits).all():
        return Evaluation(False, "model outputs contain NaN or infinity")
    t = torch.from_numpy(logits.astype(np.float32))
    accuracy = (t.argmax(dim=1) == labels).float().mean().item()
    loss = F.cross_entropy(t, labels).item()
    return Evaluation(True, "ok", accuracy=accuracy, loss=loss)


def inference_over_allowance(seconds: float, images: int, allowance_s: float) -> str | None:
    """Why `seconds` of inference (CPU s, one core) for `images` images is over an allowance of `allowance_s`
    per INFERENCE_IMAGES images, or None if it is within it."""
    if seconds <= allowance_s * images / INFERENCE_IMAGES:
        return None
    return (
        f"inference took {seconds:.1f} CPU s for {images:,} images, over the allowance of {allowance_s:g} CPU s "
        f"per {INFERENCE_IMAGES:,} images (one core): the model must predict faster (fewer or smaller layers)"
    )


def _eval_failure(log_path: Path, default: str) -> str:
    text = log_path.read_text(errors="replace") if log_path.is_file() else ""
    for line in reversed(text.splitlines()):
        if line.startswith(EVAL_ERROR_PREFIX):
            return line[len(EVAL_ERROR_PREFIX) :].strip()[:500]
    return default


def _read_logits(out: Path, n: int) -> np.ndarray | str:
    """The logits the evaluation process wrote, or why they are unusable."""
    try:
        data = read_untrusted(out, "logits.npy", max_bytes=n * prepare.NUM_CLASSES * 8 + 4096)
        return np.load(io.BytesIO(data), allow_pickle=False)
    except UnsafeFile as exc:
        return "evaluation wrote no predictions" if str(exc) == "no logits.npy" else f"unusable predictions: {exc}"
    except Exception as exc:  # malformed .npy: ValueError, EOFError, ...
        return f"unreadable predictions: {type(exc).__name__}"


def eval_limits(limits: Limits, images: int) -> Limits:
    """The evaluation's clock: one core, the start-up cap, then the inference allowance for these images;
    room on disk for the logits only."""
    return Limits(
        budget_s=limits.inference_allowance_s * images / INFERENCE_IMAGES,
        startup_allowance_s=EVAL_STARTUP_CAP_S,
        export_allowance_s=0.0,
        cpu_threads=1,
        memory_cap_bytes=limits.memory_cap_bytes,
        disk_cap_bytes=images * prepare.NUM_CLASSES * 8 + 2**20,
        max_files=16,
    )


def _killed_reason(outcome: SandboxOutcome, images: int, limits: Limits) -> str:
    """Why the evaluation was killed for its time: the machine, loading, or inference over its allowance."""
    compute = outcome.compute
    if outcome.stopped_by_wall_ceiling:
        return (
            f"evaluation stopped at the wall-clock ceiling ({outcome.wall_seconds:.0f} s) after only "
            f"{compute.cpu_seconds:.1f} CPU s: the machine left it too little CPU"
        )
    if outcome.after_marker_s is None:
        return f"loading the model for evaluation took more than {EVAL_STARTUP_CAP_S:g} CPU s"
    return "killed: " + (
        inference_over_allowance(outcome.after_marker_s, images, limits.inference_allowance_s)
        or f"inference ran past its allowance of {limits.inference_allowance_s:g} CPU s per {INFERENCE_IMAGES:,} images"
    )


@dataclass
class Prediction:
    """The logits a model produced on images without labels, or why it produced none."""

    logits: np.ndarray | None
    reason: str
    inference_seconds: float | None = None  # as Evaluation.inference_seconds


def evaluate_artifact(
    artifact: Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    eval_dir: Path,
    limits: Limits,
    slot: Slot | None = None,
) -> Evaluation:
    """Predict on images (uint8, N x 28 x 28) in a sandbox, within the inference allowance, then score against
    labels here; in a slot, on the slot's cores (never its GPU: evaluation is on the CPU)."""
    predicted = predict_artifact(artifact, images, eval_dir, limits, slot)
    if predicted.logits is None:
        return Evaluation(False, predicted.reason, inference_seconds=predicted.inference_seconds)
    return replace(score_logits(predicted.logits, labels), inference_seconds=predicted.inference_seconds)


def predict_artifact(
    artifact: Path, images: torch.Tensor, eval_dir: Path, limits: Limits, slot: Slot | None = None
) -> Prediction:
    """The logits of the model at artifact on images, predicted in a sandbox within the inference allowance. They
    are checked for shape, dtype and finiteness only by score_logits, where the labels are: a pool's worker
    predicts, the coordinator scores (infra/pool/protocol.py)."""
    if not artifact.is_file() or artifact.is_symlink():
        return Prediction(None, "no model artifact to evaluate")
    n = len(images)
    remove_tree(eval_dir)
    eval_dir.mkdir(parents=True, mode=0o755)
    buffer = io.BytesIO()
    np.save(buffer, images.numpy(), allow_pickle=False)
    images_path = eval_dir / "images.npy"
    write_private(images_path, buffer.getvalue())
    model_path = eval_dir / prepare.MODEL_ARTIFACT  # the sandbox user must be able to read it, whatever its mode
    shutil.copyfile(artifact, model_path)
    model_path.chmod(0o444)
    out = eval_dir / "out"
    out.mkdir(mode=0o755)
    give_to_sandbox(out)
    job = SandboxJob(
        argv=[sys.executable, str(PREPARE_PY), "predict", str(model_path), str(images_path), str(out / "logits.npy")],
        workdir=out,
        log_path=eval_dir / "eval.log",
        limits=eval_limits(limits, n),
        env={prepare.DEVICE_ENV: "cpu"},
        ro_paths=[PREPARE_PY, model_path, images_path],
        hidden=hidden_data_dirs(),
        cpu_clock=True,
        marker=prepare.PREDICT_MARKER,
        slot=None if slot is None else replace(slot, gpu=None),
    )
    try:
        outcome = run_sandboxed(job)
        spent = outcome.after_marker_s
        if outcome.killed_for == "timeout":
            return Prediction(None, _killed_reason(outcome, n, limits), spent)
        if outcome.killed_for in ("memory", "disk", "open files"):
            return Prediction(None, f"evaluation exceeded the {outcome.killed_for} cap", spent)
        if outcome.exit_code != 0:
            failed = _eval_failure(
                job.log_path, f"evaluation process failed (exit {outcome.exit_code}, signal {outcome.signal})"
            )
            return Prediction(None, failed, spent)
        if spent is None:  # prepare.py prints the marker before predicting: a run without it predicted nothing
            return Prediction(None, "evaluation process ended before predicting")
        over = inference_over_allowance(spent, n, limits.inference_allowance_s)
        if over:
            return Prediction(None, over, spent)
        logits = _read_logits(out, n)
        return Prediction(None, logits, spent) if isinstance(logits, str) else Prediction(logits, "ok", spent)
    finally:
        remove_tree(out)
        images_path.unlink(missing_ok=True)
        model_path.unlink(missing_ok=True)
