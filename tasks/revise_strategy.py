"""Task: every N iterations, the proposer rewrites the Strategy section from the results so far."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.proposers import ProposalContext, Revision, make_proposer
from infra.proposers.intake import accept_revision
from tasks.propose import retry_unless_stopping


@task(
    name="revise-strategy",
    task_run_name="revise-strategy-after-{after_iteration}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_stopping,
)
def revise_strategy(proposer_spec: str, model: str | None, ctx: ProposalContext, after_iteration: int) -> Revision:
    """The new Strategy text, the lessons learned, and the language-model calls it took (through the intake)."""
    return accept_revision(make_proposer(proposer_spec, model).revise_strategy(ctx), ctx.strategy)
