"""Task: keep or discard, by the sequential acceptance rule (infra/research/acceptance_rule.py): the whole procedure
for one candidate, so the measured runs it asks for (the candidate's, the incumbent's again) are its nested train and
evaluate task runs."""

from __future__ import annotations

from typing import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.research.acceptance_rule import Decision, Role, RuleConfig, failed, procedure, step
from infra.research.evidence import Evidence


@task(name="decide", task_run_name="decide-{iteration}", cache_policy=NO_CACHE)
def keep_or_discard(found: Evidence, measure: Callable[[Role], float | None], rule: RuleConfig,
                    iteration: int) -> Decision:
    """The final decision, keep or discard, going on from the runs found (a resumed decision); measure(role) makes
    and stores one more run, and returns its score (None: it failed)."""
    incumbent = found.scores(Role.INCUMBENT)
    if found.failed_run is not None:  # a resumed decision whose candidate had already failed a run
        before = found.scores(Role.CANDIDATE)[:found.failed_run - 1]
        return failed(step(incumbent, before, found.floor, rule, look=False), found.failed_run)
    decision, _, _ = procedure(incumbent, found.floor, measure, rule, candidate=found.scores(Role.CANDIDATE),
                               last=found.last)
    return decision
