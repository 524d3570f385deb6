"""Tasks: score a trained candidate with the fixed evaluation code; report held-out test accuracy."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

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


@task(name="test-report", task_run_name="test-report-{iteration}", cache_policy=NO_CACHE)
def test_report(run_dir: Path, test: tuple[torch.Tensor, torch.Tensor], limits: Limits, iteration: int) -> float | None:
    """Held-out test accuracy of a kept model: shown, never used to decide."""
    evaluation = score_artifact(run_dir, *test, limits, name="test-eval")
    return evaluation.accuracy if evaluation.ok else None
