"""Task: every N iterations, the proposer rewrites the Strategy section from the results so far."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.proposers import ProposalContext, make_proposer
from tasks.propose import retry_unless_stopping


@task(name="revise-strategy", task_run_name="revise-strategy-after-{after_iteration}", cache_policy=NO_CACHE,
      retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_stopping)
def revise_strategy(proposer_spec: str, model: str | None, ctx: ProposalContext,
                    after_iteration: int) -> tuple[str, str, list[dict[str, Any]]]:
    """(new Strategy text, lessons learned, the language-model calls it took)."""
    proposer = make_proposer(proposer_spec, model)
    text, lessons = proposer.revise_strategy(ctx)
    return text, lessons, list(getattr(proposer, "calls", []))
