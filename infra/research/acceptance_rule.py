"""
The acceptance rule: keep a candidate only if it beats the incumbent by more than the noise.

Pure functions, no Prefect, no I/O. The noise belongs to the incumbent: every
validation accuracy measured for the incumbent's code (its original run and its
re-runs with other seeds) gives its mean and sample variance. Two or three runs
can agree by chance, so that variance is pooled with a prior (PRIOR_SIGMA, worth
PRIOR_DOF runs' degrees of freedom): the floor. A newly kept incumbent brings its
own runs, and its spread replaces the old incumbent's.

    delta     = mean(candidate runs) - mean(incumbent runs)
    sigma^2   = ((n_inc - 1) * s_inc^2 + prior_dof * prior_sigma^2) / (n_inc - 1 + prior_dof)
    threshold = max(min_delta, t(confidence, n_inc - 1 + prior_dof) * sigma * sqrt(1/n_inc + 1/n_cand))
    keep      if delta > threshold

Student's t (not z) because sigma is estimated from few runs. A close call
(threshold/2 < delta <= threshold) may be confirmed by more runs of the candidate,
which shrinks the threshold; a lucky seed rarely survives it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from statistics import NormalDist

from infra.records import Verdict


@dataclass(frozen=True)
class RuleConfig:
    confidence: float = 0.99  # one-sided: a no-change candidate is kept about 1-3% of the time
    min_delta: float = 0.002  # never keep less than 0.2 points, however quiet the incumbent
    prior_sigma: float = 0.005  # the noise floor: what a quiet recipe varies by at short budgets
    prior_dof: float = 2.0  # how many runs' worth of evidence the floor is worth
    confirm_runs: int = 1  # extra candidate runs for a close call (0: never confirm)


@dataclass(frozen=True)
class Decision:
    verdict: Verdict  # keep, discard, confirm
    delta: float
    sigma: float
    threshold: float
    incumbent_mean: float
    candidate_mean: float
    n_incumbent: int
    n_candidate: int

    def as_dict(self) -> dict:
        return {**asdict(self), "verdict": str(self.verdict)}


def t_quantile(p: float, dof: float) -> float:
    """Student's t quantile by the Cornish-Fisher expansion (within 1% for dof >= 3)."""
    z = NormalDist().inv_cdf(p)
    return (z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * dof**3))


def noise(incumbent_scores: list[float], cfg: RuleConfig) -> tuple[float, float]:
    """(sigma, degrees of freedom) of one run of the incumbent, pooled with the prior floor."""
    dof = len(incumbent_scores) - 1
    variance = statistics.variance(incumbent_scores) if dof >= 1 else 0.0
    total = dof + cfg.prior_dof
    return math.sqrt((dof * variance + cfg.prior_dof * cfg.prior_sigma**2) / total), total


def decide(incumbent_scores: list[float], candidate_scores: list[float], cfg: RuleConfig = RuleConfig()) -> Decision:
    """Keep, discard, or ask for a confirmation run ('confirm')."""
    if not incumbent_scores or not candidate_scores:
        raise ValueError("both the incumbent and the candidate need at least one score")
    n_inc, n_cand = len(incumbent_scores), len(candidate_scores)
    inc_mean, cand_mean = statistics.fmean(incumbent_scores), statistics.fmean(candidate_scores)
    sigma, dof = noise(incumbent_scores, cfg)
    threshold = max(cfg.min_delta, t_quantile(cfg.confidence, dof) * sigma * math.sqrt(1 / n_inc + 1 / n_cand))
    delta = cand_mean - inc_mean
    if delta > threshold:
        verdict = Verdict.KEEP
    elif delta > threshold / 2 and n_cand <= cfg.confirm_runs:
        verdict = Verdict.CONFIRM
    else:
        verdict = Verdict.DISCARD
    return Decision(verdict, delta, sigma, threshold, inc_mean, cand_mean, n_inc, n_cand)


def naive_decide(incumbent_best: float, candidate: float) -> Verdict:
    """What most loops do: keep any improvement over the incumbent's single (luckiest) score."""
    return Verdict.KEEP if candidate > incumbent_best else Verdict.DISCARD
