"""Task: keep or discard, by the noise-aware acceptance rule (infra/research/acceptance_rule.py): the whole procedure
for one candidate, so the measured runs it asks for (confirmations, the new incumbent's own noise) are its nested
train and evaluate task runs."""

from __future__ import annotations

from typing import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.research.acceptance_rule import Decision, RuleConfig, judge


@task(name="decide", task_run_name="decide-{iteration}", cache_policy=NO_CACHE)
def keep_or_discard(incumbent_scores: list[float], first_score: float, next_score: Callable[[], float | None],
                    rule: RuleConfig, keep_runs: int, iteration: int) -> tuple[Decision, list[float]]:
    """The final decision, keep or discard, and the scores of all the candidate's runs; next_score measures one
    more run (None: it failed)."""
    return judge(incumbent_scores, first_score, next_score, rule, keep_runs)
