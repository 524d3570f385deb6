"""Task: one look of the sequential acceptance rule (infra/research/acceptance_rule.py) at a candidate's evidence:
keep, discard, or which run to measure next. The loop takes a look each time one of the decision's runs arrives."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.research.acceptance_rule import Decision, Role, RuleConfig, failed, steer, step
from infra.research.evidence import Evidence


@task(name="decide", task_run_name="decide-{iteration}", cache_policy=NO_CACHE)
def keep_or_discard(
    found: Evidence, rule: RuleConfig, iteration: int, look: bool, incumbent_failing: bool = False
) -> Decision:
    """The decision after the runs found: final (keep or discard) or the run it needs next. look: a candidate run
    has arrived since the last look (a look is taken once per candidate run). incumbent_failing: the incumbent's
    runs for this decision keep failing now, so it is compared with the runs the incumbent has."""
    incumbent = found.scores(Role.INCUMBENT)
    if found.failed_run is not None:  # a keep needs every run of the candidate
        before = found.scores(Role.CANDIDATE)[: found.failed_run - 1]
        return failed(step(incumbent, before, found.floor, rule, look=False), found.failed_run)
    return steer(
        step(incumbent, found.scores(Role.CANDIDATE), found.floor, rule, look=look), incumbent_failing, bool(incumbent)
    )
