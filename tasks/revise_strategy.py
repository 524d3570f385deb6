"""Task: every N iterations, the proposer rewrites the Strategy section from the results so far."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.proposers import ProposalContext, make_proposer


@task(name="revise-strategy", task_run_name="revise-strategy-after-{after_iteration}", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def revise_strategy(proposer_spec: str, ctx: ProposalContext, after_iteration: int) -> tuple[str, str]:
    """(new Strategy text, lessons learned)."""
    return make_proposer(proposer_spec).revise_strategy(ctx)
