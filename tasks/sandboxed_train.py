"""Task: train one candidate in the sandbox, its output streamed into this task's Prefect log."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from infra.failpoints import failpoint
from infra.sandbox.slots import Slot
from infra.sandbox.trial import TrialResult, train_candidate
from infra.settings import Limits
from prepare import BUDGET_MARKER


@task(
    name="train", task_run_name="train-{iteration}-seed-{seed}", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5
)
def sandboxed_train(
    code: str,
    run_dir: Path,
    limits: Limits,
    seed: int,
    iteration: int,
    device: str | None = None,
    slot: Slot | None = None,
) -> TrialResult:
    """Candidate crashes are results, not exceptions; a retry only follows an infrastructure error."""
    logger = get_run_logger()

    def on_line(line: str) -> None:
        logger.info(line)
        if line.startswith(BUDGET_MARKER):
            failpoint("train", iteration)

    result = train_candidate(code, run_dir, limits, seed=seed, device=device, on_line=on_line, slot=slot)
    logger.info(
        f"trained: status {result.status} ({result.reason}), epochs {result.epochs}, "
        f"train_seconds {result.train_seconds}"
    )
    return result
