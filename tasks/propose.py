"""Task: ask the proposer for the next train.py."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.proposers import Proposal, ProposalContext, make_proposer


@task(name="propose", task_run_name="propose-{ctx.iteration}", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def propose_edit(proposer_spec: str, ctx: ProposalContext) -> Proposal | None:
    """A fresh proposal every time (never cached: a cached proposal would be stale)."""
    return make_proposer(proposer_spec).propose(ctx)
