"""Tasks: ask the proposer for the next train.py, or for a fix of one that failed its pre-flight.

Whatever the proposer returns passes the one intake (infra/proposers/intake.py) before the flow sees it."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.proposers import Proposal, ProposalContext, StopResearch, make_proposer
from infra.proposers.base import Settles
from infra.proposers.intake import accept_proposal


def retry_unless_stopping(_task: Any, _run: Any, state: Any) -> bool:
    """Transient failures retry; a spending cap (StopResearch) does not."""
    return not isinstance(state.data, StopResearch)


@task(
    name="propose",
    task_run_name="propose-{ctx.iteration}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_stopping,
)
def propose_edit(proposer_spec: str, model: str | None, ctx: ProposalContext) -> Proposal | None:
    """A fresh proposal every time (never cached: a cached proposal would be stale)."""
    return accept_proposal(make_proposer(proposer_spec, model).propose(ctx), ctx.incumbent_code)


@task(
    name="fix",
    task_run_name="fix-{ctx.iteration}-attempt-{attempt}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_stopping,
)
def fix_candidate(
    proposer_spec: str,
    model: str | None,
    ctx: ProposalContext,
    candidate: Proposal,
    error: str,
    log_tail: str,
    attempt: int,
) -> Proposal:
    """Send the failure and its traceback back to the model for a corrected train.py."""
    return accept_proposal(make_proposer(proposer_spec, model).fix(ctx, candidate, error, log_tail), ctx.incumbent_code)


@task(
    name="settle",
    task_run_name="settle-before-{ctx.iteration}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
)
def settle_outcomes(proposer_spec: str, model: str | None, ctx: ProposalContext) -> int:
    """Tell a proposer that keeps its own account (optuna's study) the finished iterations' verdicts and scores."""
    proposer: Settles = make_proposer(proposer_spec, model)  # type: ignore[assignment]
    return proposer.settle(ctx)
