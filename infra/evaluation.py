"""
Independent evaluation: the metric no candidate can fake.

A separate, sandboxed process runs prepare.py's fixed `predict` on images it is
given without labels and writes logits. Only this orchestrator holds the labels;
it checks the logits' shape and finiteness and computes accuracy and loss itself.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import prepare
from infra.sandbox import SandboxJob, run_sandboxed
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
    if not np.isfinite(logits).all():
        return Evaluation(False, "model outputs contain NaN or infinity")
    t = torch.from_numpy(logits.astype(np.float32))
    accuracy = (t.argmax(dim=1) == labels).float().mean().item()
    loss = F.cross_entropy(t, labels).item()
    return Evaluation(True, "ok", accuracy=accuracy, loss=loss)


def _eval_failure(log_path: Path, default: str) -> str:
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        if line.startswith(EVAL_ERROR_PREFIX):
            return line[len(EVAL_ERROR_PREFIX):].strip()
    return default


def evaluate_artifact(
    artifact: Path, images: torch.Tensor, labels: torch.Tensor, workdir: Path, limits: Limits
) -> Evaluation:
    """Predict on images (uint8, N x 28 x 28) in a sandbox, then score against labels here."""
    workdir.mkdir(parents=True, exist_ok=True)
    np.save(workdir / "images.npy", images.numpy(), allow_pickle=False)
    logits_path = workdir / "logits.npy"
    logits_path.unlink(missing_ok=True)
    artifact = artifact.resolve()
    job = SandboxJob(
        argv=[sys.executable, str(PREPARE_PY), "predict", str(artifact), "images.npy", "logits.npy"],
        workdir=workdir,
        log_path=workdir / "eval.log",
        startup_allowance_s=limits.eval_timeout_s,
        budget_s=0.0,
        grace_s=0.0,
        memory_cap_bytes=limits.memory_cap_bytes,
        env={"AUTORESEARCH_DEVICE": "cpu"},
        ro_paths=[PREPARE_PY, artifact],
        hidden=hidden_data_dirs(),
    )
    outcome = run_sandboxed(job)
    if outcome.killed_for == "timeout":
        return Evaluation(False, f"evaluation took longer than {limits.eval_timeout_s:.0f} s")
    if outcome.killed_for == "memory":
        return Evaluation(False, "evaluation exceeded the memory cap")
    if outcome.exit_code != 0:
        return Evaluation(False, _eval_failure(job.log_path, f"evaluation process failed (exit {outcome.exit_code}, signal {outcome.signal})"))
    if not logits_path.is_file():
        return Evaluation(False, "evaluation wrote no predictions")
    try:
        logits = np.load(logits_path, allow_pickle=False)
    except Exception as exc:
        return Evaluation(False, f"unreadable predictions: {exc}")
    return score_logits(logits, labels)
