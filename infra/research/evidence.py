"""
The evidence a decision rests on, read from the measured runs the store holds: pure, no I/O.

A decision about iteration i compares its candidate runs with the incumbent's current runs
(infra/research/acceptance_rule.py, "Drift"), under the experiment's noise floor pooled from every other
iteration's runs. Everything is derived from the stored runs, so a decision interrupted between two runs
resumes with exactly the runs it had: none lost, none counted twice, none made again.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from infra.records import DecisionRecord, MeasuredRun, RunUsed
from infra.research.acceptance_rule import Decision, Floor, Role, RuleConfig, current, noise_floor, summary


@dataclass(frozen=True)
class Evidence:
    incumbent: list[MeasuredRun]  # the incumbent's current ok runs, oldest first
    candidate: list[MeasuredRun]  # the candidate's runs so far that count (failed ones included), oldest first
    floor: Floor
    last: Role | None  # whose run was made last for this decision (a look follows a candidate's run only)

    @property
    def failed_run(self) -> int | None:
        """The number (1-based) of the candidate's first failed run, or None."""
        return next((k for k, r in enumerate(self.candidate, 1) if r.score is None), None)

    def scores(self, role: Role) -> list[float]:
        runs = self.candidate if role == Role.CANDIDATE else self.incumbent
        return [r.score for r in runs if r.score is not None]


def evidence(
    runs: list[MeasuredRun], iteration: int, incumbent: int, cfg: RuleConfig, now: tuple[int, datetime]
) -> Evidence:
    """For the decision about `iteration` against the incumbent iteration `incumbent`, from all the experiment's
    measured runs (oldest first). now: the next run's number and the time, for a decision with no run yet."""
    made_for = [r for r in runs if r.decided_in == iteration and not r.remeasured]
    since_seq, since_time = (made_for[0].seq, made_for[0].made_at) if made_for else now
    of_incumbent = [r for r in runs if r.iteration == incumbent and r.score is not None]
    fresh = current([(r.seq, r.made_at) for r in of_incumbent], since_seq, since_time, cfg)
    groups: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        if r.iteration != iteration and r.score is not None:
            groups[r.iteration].append(r.score)
    last = None if not made_for else Role.CANDIDATE if made_for[-1].iteration == iteration else Role.INCUMBENT
    return Evidence(
        incumbent=[r for r, ok in zip(of_incumbent, fresh) if ok],
        candidate=[r for r in made_for if r.iteration == iteration],
        floor=noise_floor(list(groups.values()), cfg),
        last=last,
    )


def decision_record(d: Decision, found: Evidence, **where: Any) -> DecisionRecord:
    """A decision as the iteration's record keeps it: the numbers of its last look, why it stopped, its one-line
    summary, and the runs it used, by seq and seed, for the candidate and the incumbent. where: the incumbent it was
    compared with, the one it was proposed on, how it was re-based."""
    numbers = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(d).items()}
    for key in ("verdict", "stop", "next_run"):  # the enums as their strings; a stored decision has no next run
        numbers.pop(key)
    threshold = d.threshold
    return DecisionRecord(
        **numbers,
        verdict=str(d.verdict),
        stop=str(d.stop),
        threshold=threshold if math.isfinite(threshold) else None,
        summary=summary(d),
        candidate_runs=tuple(RunUsed(r.seq, r.seed, r.score) for r in found.candidate),
        incumbent_runs=tuple(RunUsed(r.seq, r.seed, r.score) for r in found.incumbent),
        **where,
    )
