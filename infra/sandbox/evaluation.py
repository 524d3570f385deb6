"""
Independent evaluation: the metric no candidate can fake.

A separate, sandboxed process runs prepare.py's fixed `predict` on the candidate's artifact (a format
without code: prepare.load_artifact) and on images it is given without labels, and writes logits into
the one directory it may write. Only this orchestrator holds the labels; it takes the logits file as
untrusted data (infra/sandbox/safe_files.py), checks dtype, shape and finiteness, and computes accuracy and
loss itself.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import prepare
from infra.sandbox.identity import give_to_sandbox
from infra.sandbox.run import SandboxJob, run_sandboxed
from infra.sandbox.safe_files import UnsafeFile, read_untrusted, remove_tree, write_private
from infra.settings import PREPARE_PY, Limits

EVAL_ERROR_PREFIX = "eval_error:"
SYSTEM_DATASETS_DIR = Path("/usr/share/datasets")  # Debian's datasets, whatever prepare.DEBIAN_DIR says


@dataclass
class Evaluation:
    ok: bool
    reason: str
    accuracy: float | None = None
    loss: float | None = None


def hidden_data_dirs() -> list[Path]:
    """Every place the data may sit on the host; the sandbox hides each one that it would otherwise show."""
    dirs = [prepare.cache_dir(), prepare.DEBIAN_DIR, SYSTEM_DATASETS_DIR]
    if os.environ.get("AUTORESEARCH_DATA_DIR"):
        dirs.append(Path(os.environ["AUTORESEARCH_DATA_DIR"]))
    return dirs


def score_logits(logits: np.ndarray, labels: torch.Tensor) -> Evaluation:
    """Check the model's output and compute accuracy and mean cross-entropy against labels."""
    expected = (len(labels), prepare.NUM_CLASSES)
    if logits.ndim != 2 or tuple(logits.shape) != expected:
        return Evaluation(False, f"wrong output shape {tuple(logits.shape)}: expected {expected}")
    if logits.dtype.kind != "f":
        return Evaluation(False, f"predictions are {logits.dtype}, not floating point")
    if not np.isfinite(logits).all():
        return Evaluation(False, "model outputs contain NaN or infinity")
    t = torch.from_numpy(logits.astype(np.float32))
    accuracy = (t.argmax(dim=1) == labels).float().mean().item()
    loss = F.cross_entropy(t, labels).item()
    return Evaluation(True, "ok", accuracy=accuracy, loss=loss)


def _eval_failure(log_path: Path, default: str) -> str:
    text = log_path.read_text(errors="replace") if log_path.is_file() else ""
    for line in reversed(text.splitlines()):
        if line.startswith(EVAL_ERROR_PREFIX):
            return line[len(EVAL_ERROR_PREFIX):].strip()[:500]
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


def evaluate_artifact(
    artifact: Path, images: torch.Tensor, labels: torch.Tensor, eval_dir: Path, limits: Limits
) -> Evaluation:
    """Predict on images (uint8, N x 28 x 28) in a sandbox, then score against labels here."""
    if not artifact.is_file() or artifact.is_symlink():
        return Evaluation(False, "no model artifact to evaluate")
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
        # scoring has its own wall-clock limit, the eval timeout, and room for the logits only
        limits=Limits(budget_s=limits.eval_timeout_s, startup_allowance_s=0.0, export_allowance_s=0.0,
                      memory_cap_bytes=limits.memory_cap_bytes,
                      disk_cap_bytes=len(labels) * prepare.NUM_CLASSES * 8 + 2**20, max_files=16),
        env={"AUTORESEARCH_DEVICE": "cpu"},
        ro_paths=[PREPARE_PY, model_path, images_path],
        hidden=hidden_data_dirs(),
    )
    try:
        outcome = run_sandboxed(job)
        if outcome.killed_for == "timeout":
            return Evaluation(False, f"evaluation took longer than {limits.eval_timeout_s:.0f} s")
        if outcome.killed_for in ("memory", "disk", "open files"):
            return Evaluation(False, f"evaluation exceeded the {outcome.killed_for} cap")
        if outcome.exit_code != 0:
            return Evaluation(False, _eval_failure(job.log_path, f"evaluation process failed (exit {outcome.exit_code}, signal {outcome.signal})"))
        logits = _read_logits(out, len(labels))
        return Evaluation(False, logits) if isinstance(logits, str) else score_logits(logits, labels)
    finally:
        remove_tree(out)
        images_path.unlink(missing_ok=True)
        model_path.unlink(missing_ok=True)
