"""Task: keep or discard, by the noise-aware acceptance rule (infra/research/acceptance_rule.py)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.research.acceptance_rule import Decision, RuleConfig, decide


@task(name="decide", task_run_name="decide-{iteration}", cache_policy=NO_CACHE)
def keep_or_discard(incumbent_scores: list[float], candidate_scores: list[float], rule: RuleConfig, iteration: int) -> Decision:
    return decide(incumbent_scores, candidate_scores, rule)
