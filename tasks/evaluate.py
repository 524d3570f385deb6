"""Tasks: score a trained candidate with the fixed evaluation code; report held-out test accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from infra.sandbox.evaluation import score_logits
from infra.sandbox.slots import Slot
from infra.sandbox.trial import TrialResult, score_artifact, score_trial
from infra.settings import Limits


@task(
    name="evaluate",
    task_run_name="evaluate-{iteration}-seed-{seed}",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
)
def evaluate(
    trained: TrialResult,
    val: tuple[torch.Tensor, torch.Tensor],
    limits: Limits,
    iteration: int,
    seed: int,
    slot: Slot | None = None,
) -> TrialResult:
    result = score_trial(trained, val, limits, slot)
    get_run_logger().info(f"evaluated: status {result.status}, val_accuracy {result.val_accuracy}")
    return result


POOL_TEST_LOGITS = "test-logits.npy"  # a pool's run: the test logits its worker sent (flows/pool_slots.py)


@task(name="test-report", task_run_name="test-report-{iteration}", cache_policy=NO_CACHE)
def test_report(run_dir: Path, test: tuple[torch.Tensor, torch.Tensor], limits: Limits, iteration: int) -> float | None:
    """Held-out test accuracy of a kept model: shown, never used to decide. A run measured on a pool's worker left
    no model here, only the test logits the worker predicted: they are scored against the labels here."""
    sent = run_dir / POOL_TEST_LOGITS
    if sent.is_file() and not sent.is_symlink():
        evaluation = score_logits(np.load(sent, allow_pickle=False), test[1])
    else:
        evaluation = score_artifact(run_dir, *test, limits, name="test-eval")
    return evaluation.accuracy if evaluation.ok else None
