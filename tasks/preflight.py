"""Task: a few seconds on a small subset in the same sandbox, so no budget is spent on a candidate that cannot start."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from infra.sandbox.trial import TrialResult, train_candidate
from infra.settings import PREFLIGHT_BUDGET_S, PREFLIGHT_IMAGES, Limits


@task(
    name="preflight",
    task_run_name="preflight-{iteration}-attempt-{attempt}",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
)
def preflight(
    code: str, run_dir: Path, limits: Limits, iteration: int, attempt: int, device: str | None = None
) -> TrialResult:
    logger = get_run_logger()
    smoke = replace(limits, budget_s=PREFLIGHT_BUDGET_S)  # the same allowances as the measured runs
    result = train_candidate(
        code, run_dir, smoke, seed=0, device=device, on_line=logger.info, split_limit=PREFLIGHT_IMAGES
    )
    logger.info(f"preflight: {result.status} ({result.reason})")
    return result
