"""
The acceptance rule: keep a candidate only if it beats the incumbent by more than the noise.

Pure functions, no Prefect, no I/O. The noise belongs to the incumbent: every
validation accuracy measured for the incumbent's code (its original run and its
re-runs with other seeds) gives its mean and sample variance. Two or three runs
can agree by chance, so that variance is pooled with a prior (PRIOR_SIGMA, worth
PRIOR_DOF runs' degrees of freedom): the floor. A newly kept incumbent brings its
own runs, and its spread replaces the old incumbent's.

    x         = the incumbent's runs, each clipped to median(x) +- w once there are 3 or more,
                w = max(3 * 1.4826 * MAD(x), 4 * prior_sigma)
    delta     = mean(candidate runs) - mean(x)
    sigma^2   = ((n_inc - 1) * s_x^2 + prior_dof * prior_sigma^2) / (n_inc - 1 + prior_dof)
    threshold = max(min_delta, t(confidence, n_inc - 1 + prior_dof) * sigma * sqrt(1/n_inc + 1/n_cand))
    keep      if delta > threshold

Student's t (not z) because sigma is estimated from few runs. A close call
(threshold/2 < delta <= threshold) may be confirmed by more runs of the candidate,
which shrinks the threshold; a lucky seed rarely survives it.

The incumbent is a reference, the candidate is on trial. One wild run of the incumbent (a heavy tail:
the shipped baseline ends near 0.76 instead of 0.84 one seed in six; or a run a candidate spoiled on
purpose) must not move the bar for everyone after it: a candidate that saved an untrained model in one
of its noise runs once left the incumbent's runs at [0.8785, 0.0952, 0.8785], the threshold at 1.374,
and nothing could be kept again. So the incumbent's runs are winsorised around their median (above);
a candidate's runs count as they are, every one of them: a run it spoiled counts against it.

`judge` is the whole procedure for one candidate: its first run; more runs while the rule calls it a
close call; on a keep, `keep_runs` more (the new incumbent's own noise) and the decision made again on
all of its runs, which must still say keep, and its runs must not vary far more than the incumbent's
noise (an F test at the rule's confidence: its runs would set every later threshold, and a candidate
that spread them on purpose froze the experiment). A run that fails after the first (crash, timeout, a
model that cannot be scored) ends the procedure with a discard: a keep needs every run. The seeds of the
runs are drawn at random by the orchestrator, so the seed does not tell a candidate which run it is
(the page cache still can, by timing: docs/threat-model.md).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, replace
from typing import Callable

from scipy import stats

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
    incumbent_mean: float  # of its winsorised runs: the reference a candidate must beat
    candidate_mean: float  # of all its runs
    n_incumbent: int
    n_candidate: int
    note: str = ""  # why a procedure ended as it did, when the numbers alone do not say (judge)

    def as_dict(self) -> dict:
        return {**asdict(self), "verdict": str(self.verdict)}


def t_quantile(p: float, dof: float) -> float:
    """Student's t quantile (scipy.stats)."""
    return float(stats.t.ppf(p, dof))


def spread_too_wide(incumbent_scores: list[float], candidate_scores: list[float], cfg: RuleConfig) -> str:
    """Why a candidate's runs vary too much for it to become the incumbent, or '' (an F test at cfg.confidence of its
    sample variance against the incumbent's noise, the rule's sigma). Its runs would set every later threshold: a
    candidate that spread its runs on purpose (a little below its first, by steps) raised the next threshold from
    0.017 to 0.068 and froze the experiment (red team)."""
    if len(candidate_scores) < 2:
        return ""
    sigma, dof = noise(incumbent_scores, cfg)
    spread = statistics.stdev(candidate_scores)
    limit = sigma * math.sqrt(float(stats.f.ppf(cfg.confidence, len(candidate_scores) - 1, dof)))
    if spread <= limit:
        return ""
    return (f"its runs vary far more than the incumbent's (sd {spread:.4f} against a noise of {sigma:.4f}; at most "
            f"{limit:.4f}): as the incumbent it would raise every later threshold")


MAD_TO_SIGMA = 1.4826  # the median absolute deviation of a normal sample times this estimates its sigma
CLIP_MADS = 3.0  # an incumbent run further than this many estimated sigmas from its median is wild...
CLIP_PRIOR_SIGMAS = 4.0  # ...and further than this many prior sigmas (a few runs can agree by chance)


def winsorised(incumbent_scores: list[float], cfg: RuleConfig) -> list[float]:
    """The incumbent's runs, each clipped to median +- w (see the module's docstring); as they are below 3 runs,
    where a median cannot tell the wild run from the others."""
    if len(incumbent_scores) < 3:
        return list(incumbent_scores)
    middle = statistics.median(incumbent_scores)
    mad = statistics.median(abs(x - middle) for x in incumbent_scores)
    w = max(CLIP_MADS * MAD_TO_SIGMA * mad, CLIP_PRIOR_SIGMAS * cfg.prior_sigma)
    return [min(max(x, middle - w), middle + w) for x in incumbent_scores]


def noise(incumbent_scores: list[float], cfg: RuleConfig) -> tuple[float, float]:
    """(sigma, degrees of freedom) of one run of the incumbent, from its winsorised runs, pooled with the prior floor."""
    scores = winsorised(incumbent_scores, cfg)
    dof = len(scores) - 1
    variance = statistics.variance(scores) if dof >= 1 else 0.0
    total = dof + cfg.prior_dof
    return math.sqrt((dof * variance + cfg.prior_dof * cfg.prior_sigma**2) / total), total


def decide(incumbent_scores: list[float], candidate_scores: list[float], cfg: RuleConfig = RuleConfig()) -> Decision:
    """Keep, discard, or ask for a confirmation run ('confirm')."""
    if not incumbent_scores or not candidate_scores:
        raise ValueError("both the incumbent and the candidate need at least one score")
    n_inc, n_cand = len(incumbent_scores), len(candidate_scores)
    inc_mean, cand_mean = statistics.fmean(winsorised(incumbent_scores, cfg)), statistics.fmean(candidate_scores)
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


def judge(incumbent_scores: list[float], first_score: float, next_score: Callable[[], float | None],
          cfg: RuleConfig = RuleConfig(), keep_runs: int = 0) -> tuple[Decision, list[float]]:
    """The procedure for one candidate whose first run scored first_score (module docstring): the final decision,
    keep or discard, and the scores of all its runs. next_score() measures one more run of it: its score, or None
    when that run failed."""
    scores = [first_score]
    decision = decide(incumbent_scores, scores, cfg)
    while decision.verdict == Verdict.CONFIRM:
        score = next_score()
        if score is None:
            return replace(decision, verdict=Verdict.DISCARD, note="a confirmation run failed"), scores
        scores.append(score)
        decision = decide(incumbent_scores, scores, cfg)
    if decision.verdict != Verdict.KEEP:
        return replace(decision, verdict=Verdict.DISCARD), scores
    for _ in range(keep_runs):  # the new incumbent's own noise, from more seeds: every one counts
        score = next_score()
        if score is None:
            return replace(decision, verdict=Verdict.DISCARD,
                           note=f"run {len(scores) + 1} of {1 + keep_runs} failed: a keep needs every run"), scores
        scores.append(score)
    final = decide(incumbent_scores, scores, cfg)
    if final.verdict == Verdict.KEEP:
        too_wide = spread_too_wide(incumbent_scores, scores, cfg)
        return (replace(final, verdict=Verdict.DISCARD, note=too_wide) if too_wide else final), scores
    return replace(final, verdict=Verdict.DISCARD, note=f"kept on its first run{'s' if decision.n_candidate > 1 else ''},"
                                                        f" not on all {len(scores)}"), scores


def naive_decide(incumbent_best: float, candidate: float) -> Verdict:
    """What most loops do: keep any improvement over the incumbent's single (luckiest) score."""
    return Verdict.KEEP if candidate > incumbent_best else Verdict.DISCARD
