"""
The acceptance rule: a sequential test that keeps a candidate only when it beats the incumbent by more than the
noise, spending runs where they decide.

Pure functions, no Prefect, no I/O. The loop asks `step` what to do next, given the runs so far; every answer
is a function of the runs alone, so a decision resumed after a crash goes on from the runs already stored.

The noise
---------
sigma is the run-to-run spread of one recipe. It is estimated from this decision's own runs (the incumbent's,
trimmed, and the candidate's, as they are) moderated by the experiment's floor, an empirical-Bayes prior
pooled from all its multi-run iterations (limma's moderated t):

    floor:  over every iteration with n >= 2 ok runs: a robust scale c = 1.4826 / sqrt(2) * median of the
            |x_i - x_j| within iterations (a wild run only touches its own pairs); each run clipped to its
            iteration's median +- 4c (a wild run counts as a 4-sigma one); r = (x - mean) * sqrt(n / (n - 1));
            s0^2 = mean(r^2), d0 = min(sum(n - 1), POOL_DOF_CAP). Before any multi-run iteration:
            s0 = prior_sigma, d0 = prior_dof; while sum(n - 1) < prior_dof, both, weighted by their dof.
    own:    s^2 = pooled sample variance of the trimmed incumbent runs and the candidate runs,
            d = (n_i - 1) + (n_c - 1)    (n_i: the incumbent's runs after trimming)
    sigma^2 = (d0 * s0^2 + d * s^2) / (d0 + d)          (t with d0 + d degrees of freedom)

Heavy tails (the shipped baseline ends near 0.76 instead of 0.84 one seed in six): an incumbent run further than
max(3 * 1.4826 * MAD, 4 * s0) from the median of its runs is dropped once it has 3 or more, and then it is measured
until it has 5 (a clear majority says which runs are wild); two runs that far apart ask for a third before any look;
the floor's runs are clipped. So one wild run moves neither the bar nor the floor
much. Not every case: an incumbent whose every current run is wild cannot be told from a good one, so under
one-in-six 20-sigma tails 2-4% of no-better candidates are kept (benchmarks/decision_power.py, heavy noise).
A candidate's runs count as they are: a run it spoiled counts against it.

The test
--------
    delta = mean(candidate) - mean(trimmed incumbent)
    se    = sigma * sqrt(1/n_i + 1/n_c)
    sure  = T_{d0+d}(delta / se)     the posterior probability that the candidate is better (flat prior on the
                                     two means, sigma as estimated): "97.3% sure"

A look is taken each time a candidate run arrives, at most once per run count k = n_c:

    keep     if k >= min_keep_runs and delta > min_delta and sure >= 1 - alpha_k
    discard  if k == max_runs (the cap), or sure < futility_k (clearly not better: most candidates, at k = 1)
    else     more runs: the incumbent's first while it has fewer current runs than k + 1, then the candidate's

    alpha = 1 - confidence, spent over the looks k = m..K (m = min_keep_runs, K = max_runs):
    alpha_k = alpha * (F(k) - F(k - 1)),  F(k) = ((k - m + 1) / (K - m + 1)) ** SPENDING_POWER

The guarantee. At look k a no-better candidate passes with probability at most alpha_k (the one-sided t test at
level alpha_k), so by the union bound its probability of ever being kept is at most sum(alpha_k) = alpha, however
the looks are correlated, however many incumbent runs were added between them, and wherever the procedure stops:
the false-keep rate is at most 1 - confidence (1% by default) **per candidate**. Over a night of N no-better
candidates at most N * alpha false keeps are expected (0.3 in 30). Futility stops only ever discard, so they lower
that rate further and need no correction. The bound holds when the runs are exchangeable draws with the estimated
sigma; benchmarks/decision_power.py measures the rate under Gaussian, heavy-tailed and real noise, and under drift.

Drift
-----
The machine changes through a night (21 to 18 epochs per budget within an hour here). A decision uses only the
incumbent's current runs: those made within `window_runs` measured runs and `window_hours` before the decision's
first run. When fewer than `incumbent_runs` are current, the incumbent is measured again first, so its runs are
interleaved with the candidates' and a candidate is compared with the incumbent of its own period.

Threats (docs/threat-model.md): the seeds are drawn at random by the orchestrator, so a candidate cannot tell which
of its runs is a look; a candidate whose runs vary far more than the noise is not kept (an F test: as the
incumbent its runs would raise every later threshold; it is measured on to the cap, since a spread seen in two
or three runs may be chance, and discarded there if it stays); a failed run of the candidate ends the procedure with a
discard, a keep needs every run.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Callable, Sequence

from scipy import stats

from infra.records import Verdict

MAD_TO_SIGMA = 1.4826  # the median absolute deviation of a normal sample times this estimates its sigma
CLIP_MADS = 3.0  # a run further than this many estimated sigmas from its centre is wild...
CLIP_FLOOR_SIGMAS = 4.0  # ...and (an incumbent's run) further than this many floor sigmas
FLOOR_CLIP_SIGMAS = 4.0  # the floor's runs: wide enough to leave Gaussian noise unbiased, narrow enough for a wild run
WILD_MAJORITY_RUNS = 5  # incumbent runs a look needs once one of them was wild
POOL_DOF_CAP = 20.0  # the floor counts for at most this many runs' degrees of freedom: recipes differ in noise
SPENDING_POWER = 1.5  # > 1 spends less of alpha at early looks, where only large gains can pass anyway


class Role(StrEnum):
    """Whose run a measured run is, for the decision it was made for."""

    CANDIDATE = "candidate"
    INCUMBENT = "incumbent"


class Stop(StrEnum):
    """Why a decision ended (or that it has not)."""

    MORE = ""  # undecided: measure the run `Decision.next_run` says
    KEPT = "kept"  # the test passed at a look
    WORSE = "not better"  # a futility stop: clearly not better than the incumbent
    CAP = "cap reached"  # max_runs runs without passing
    FAILED = "a run failed"  # a candidate's run crashed, timed out or could not be scored: a keep needs every run
    SPREAD = "runs too spread"  # passed at the cap, but its runs vary far more than the noise (module docstring)


@dataclass(frozen=True)
class RuleConfig:
    confidence: float = 0.99  # per candidate: a no-better candidate is kept at most 1 - confidence of the time
    min_delta: float = 0.002  # never keep less than 0.2 points, however sure
    prior_sigma: float = 0.005  # the floor before the experiment has any multi-run iteration
    prior_dof: float = 2.0  # how many runs' degrees of freedom that prior floor is worth
    max_runs: int = 8  # the cap: runs of one candidate
    min_keep_runs: int = 2  # a keep needs at least this many runs of the candidate (one lucky seed never keeps)
    incumbent_runs: int = 2  # current incumbent runs a first look needs
    futility_first: float = 0.6  # discard at the first look when less sure than this that the candidate is better...
    futility_last: float = 0.9  # ...rising to this at the look before the cap
    window_runs: int = 40  # an incumbent run is current within this many measured runs of a decision's start...
    window_hours: float = 2.0  # ...and this many hours

    def __post_init__(self) -> None:
        if not 0.5 < self.confidence < 1:
            raise ValueError(f"confidence must be between 0.5 and 1, not {self.confidence}")
        if not 1 <= self.min_keep_runs <= self.max_runs:
            raise ValueError(f"min_keep_runs ({self.min_keep_runs}) must be between 1 and max_runs ({self.max_runs})")
        if self.incumbent_runs < 1:
            raise ValueError("incumbent_runs must be at least 1")
        if not 0 <= self.futility_first <= self.futility_last < 1:
            raise ValueError("futility_first <= futility_last, both in [0, 1)")

    def needed(self, k: int) -> float | None:
        """How sure a keep must be at the look after the candidate's k-th run (None: no keep at that look)."""
        m, last = self.min_keep_runs, self.max_runs
        if k < m or k > last:
            return None
        spent = lambda j: ((j - m + 1) / (last - m + 1)) ** SPENDING_POWER  # noqa: E731
        return 1 - (1 - self.confidence) * (spent(k) - spent(k - 1))

    def futility(self, k: int) -> float:
        """Discard at the look after the candidate's k-th run when less sure than this that it is better."""
        if self.max_runs <= 2:
            return self.futility_first
        return self.futility_first + (self.futility_last - self.futility_first) * (k - 1) / (self.max_runs - 2)


@dataclass(frozen=True)
class Floor:
    """The experiment's noise floor: sigma of one run, and how many runs' degrees of freedom it is worth."""

    sigma: float
    dof: float
    pooled: bool  # from the experiment's own runs (False: the prior)


def noise_floor(groups: Sequence[Sequence[float]], cfg: RuleConfig = RuleConfig()) -> Floor:
    """The floor from the ok scores of each iteration's runs (module docstring): robust to a wild run."""
    groups = [list(g) for g in groups if len(g) >= 2]
    dof = sum(len(g) - 1 for g in groups)
    differences = [abs(a - b) for g in groups for a, b in itertools.combinations(g, 2)]
    scale = statistics.median(differences) * MAD_TO_SIGMA / math.sqrt(2) if differences else 0.0
    if scale == 0:  # no multi-run iteration, or identical runs (a deterministic recipe): the prior says
        return Floor(cfg.prior_sigma, cfg.prior_dof, pooled=False)
    residuals = []
    for g in groups:
        middle, w = statistics.median(g), FLOOR_CLIP_SIGMAS * scale
        clipped = [min(max(x, middle - w), middle + w) for x in g]
        mean = statistics.fmean(clipped)
        residuals += [(x - mean) * math.sqrt(len(g) / (len(g) - 1)) for x in clipped]
    variance = statistics.fmean(r * r for r in residuals)
    if dof < cfg.prior_dof:  # one baseline pair says little: the prior still counts, as prior_dof runs
        variance = (dof * variance + cfg.prior_dof * cfg.prior_sigma**2) / (dof + cfg.prior_dof)
        return Floor(math.sqrt(variance), dof + cfg.prior_dof, pooled=True)
    return Floor(math.sqrt(variance), min(float(dof), POOL_DOF_CAP), pooled=True)


def trimmed(incumbent: Sequence[float], floor: Floor) -> list[float]:
    """The incumbent's runs without its wild ones: a run further than w = max(3 * 1.4826 * MAD, 4 * floor sigma)
    from their median is dropped, once there are 3 or more (below, a median cannot tell the wild run from the
    others: `disagree` asks for a third). Clipping it to the edge instead still left the reference 4 sigmas / n low,
    and heavy-tailed noise then kept 5.7% of no-better candidates. The red team's incumbent [0.8785, 0.0952, 0.8785]
    (a candidate that saved an untrained model in one of its runs) must not freeze the experiment either."""
    if len(incumbent) < 3:
        return list(incumbent)
    middle = statistics.median(incumbent)
    mad = statistics.median(abs(x - middle) for x in incumbent)
    w = max(CLIP_MADS * MAD_TO_SIGMA * mad, CLIP_FLOOR_SIGMAS * floor.sigma)
    return [x for x in incumbent if abs(x - middle) <= w]


def disagree(incumbent: Sequence[float], floor: Floor) -> bool:
    """Two incumbent runs further apart than a wild run would be: one of them may be wild, and two cannot say
    which (a third run can)."""
    return len(incumbent) == 2 and abs(incumbent[0] - incumbent[1]) > CLIP_FLOOR_SIGMAS * floor.sigma * math.sqrt(2)


@dataclass(frozen=True)
class Decision:
    """Where a candidate's procedure stands after its runs so far: the numbers of its last look."""

    verdict: Verdict  # keep, discard, or confirm (undecided: measure next_run)
    stop: Stop
    next_run: Role | None  # undecided: whose run to measure next
    delta: float  # mean(candidate) - mean(trimmed incumbent), accuracy (0.0046 is +0.46 points)
    sigma: float  # one run's noise, moderated by the floor
    dof: float
    sure: float  # posterior probability that the candidate is better
    needed: float | None  # how sure a keep had to be at this look (None: no keep possible at it)
    incumbent_mean: float
    candidate_mean: float
    n_incumbent: int
    n_candidate: int
    floor_sigma: float
    note: str = ""

    @property
    def threshold(self) -> float:
        """The delta this look needed for a keep (the prompt's "margin to beat"), or inf where no keep was possible."""
        if self.needed is None:
            return math.inf
        se = self.sigma * math.sqrt(1 / self.n_incumbent + 1 / self.n_candidate)
        return max(stats.t.ppf(self.needed, self.dof) * se, 0.0)


def moderated(floor: Floor, *groups: Sequence[float]) -> tuple[float, float]:
    """(sigma, degrees of freedom) of one run: the groups' pooled sum of squares about their own means, moderated
    by the floor (module docstring, "own" and "sigma^2")."""
    own = sum((x - statistics.fmean(g)) ** 2 for g in groups for x in g)
    dof = floor.dof + sum(len(g) - 1 for g in groups)
    return math.sqrt((floor.dof * floor.sigma**2 + own) / dof), dof


def compare(incumbent: Sequence[float], candidate: Sequence[float], floor: Floor, cfg: RuleConfig) -> Decision:
    """The numbers of one look, verdict undecided (confirm)."""
    if not incumbent or not candidate:
        raise ValueError("both the incumbent and the candidate need at least one score")
    ref = trimmed(incumbent, floor)
    n_i, n_c = len(ref), len(candidate)
    inc_mean, cand_mean = statistics.fmean(ref), statistics.fmean(candidate)
    sigma, dof = moderated(floor, ref, candidate)
    delta = cand_mean - inc_mean
    se = sigma * math.sqrt(1 / n_i + 1 / n_c)
    sure = float(stats.t.cdf(delta / se, dof)) if se > 0 else float(delta > 0)
    return Decision(
        Verdict.CONFIRM,
        Stop.MORE,
        None,
        delta,
        sigma,
        dof,
        sure,
        cfg.needed(n_c),
        inc_mean,
        cand_mean,
        n_i,
        n_c,
        floor.sigma,
    )


def spread_too_wide(incumbent: Sequence[float], candidate: Sequence[float], floor: Floor, cfg: RuleConfig) -> str:
    """Why a candidate's runs vary too much for it to become the incumbent, or '' (an F test at cfg.confidence of its
    sample variance against the larger of the incumbent's noise and prior_sigma). Its runs would set later
    thresholds: a candidate that spread its runs on purpose (a little below its first, by steps) raised the next
    threshold from 0.017 to 0.068 (red team). prior_sigma, what a quiet recipe may vary by at short budgets, because
    a new recipe may honestly be noisier than the incumbent: an MLP at a 2 s budget (sd 0.0062) was refused against
    a linear incumbent's 0.0008."""
    if len(candidate) < 2:
        return ""
    sigma, dof = moderated(floor, trimmed(incumbent, floor))
    spread = statistics.stdev(candidate)
    allowed = max(sigma, cfg.prior_sigma)
    limit = allowed * math.sqrt(float(stats.f.ppf(cfg.confidence, len(candidate) - 1, dof)))
    if spread <= limit:
        return ""
    return (
        f"its runs vary far more than the incumbent's (sd {spread:.4f} against a noise of {allowed:.4f}; at most "
        f"{limit:.4f}): as the incumbent it would raise later thresholds"
    )


def step(
    incumbent: Sequence[float],
    candidate: Sequence[float],
    floor: Floor,
    cfg: RuleConfig = RuleConfig(),
    look: bool = True,
) -> Decision:
    """What to do after the runs so far (module docstring). look: the candidate's last run has just arrived (False
    after an incumbent run: no new look, only which run comes next)."""
    least = cfg.incumbent_runs + (1 if disagree(incumbent, floor) else 0)
    if len(trimmed(incumbent, floor)) < len(incumbent):  # a wild run among them: a clear majority says which
        least = max(least, WILD_MAJORITY_RUNS)
    need_incumbent = max(least, min(len(candidate) + 1, cfg.max_runs))
    if len(incumbent) < least or not candidate:
        role = Role.INCUMBENT if len(incumbent) < least else Role.CANDIDATE
        nan = math.nan
        return Decision(
            Verdict.CONFIRM,
            Stop.MORE,
            role,
            nan,
            nan,
            nan,
            nan,
            None,
            nan,
            nan,
            len(incumbent),
            len(candidate),
            floor.sigma,
        )
    now = compare(incumbent, candidate, floor, cfg)
    k = len(candidate)
    if look:
        if now.needed is not None and now.delta > cfg.min_delta and now.sure >= now.needed:
            wide = spread_too_wide(incumbent, candidate, floor, cfg)
            if not wide:
                return _ended(now, Verdict.KEEP, Stop.KEPT)
            # Two or three runs say little about a spread (an MLP's two runs 2.7 points apart under a busy core,
            # sd 0.0191, were a real +2-point gain, seen in CI): measure on, and refuse only at the cap.
            if k >= cfg.max_runs:
                return _ended(now, Verdict.DISCARD, Stop.SPREAD, wide)
        elif k >= cfg.max_runs:
            return _ended(now, Verdict.DISCARD, Stop.CAP)
        if now.sure < cfg.futility(k):
            return _ended(now, Verdict.DISCARD, Stop.WORSE)
    role = Role.INCUMBENT if len(incumbent) < need_incumbent else Role.CANDIDATE
    return Decision(**{**now.__dict__, "next_run": role})


def _ended(now: Decision, verdict: Verdict, stop: Stop, note: str = "") -> Decision:
    return Decision(**{**now.__dict__, "verdict": verdict, "stop": stop, "next_run": None, "note": note})


def failed(now: Decision, k: int) -> Decision:
    """The procedure after the candidate's k-th run failed: discarded, its last numbers kept."""
    return _ended(now, Verdict.DISCARD, Stop.FAILED, f"run {k} of the candidate failed: a keep needs every run")


def steer(decision: Decision, incumbent_failing: bool, has_incumbent: bool) -> Decision:
    """The run to make next when the incumbent keeps failing now: the candidate's, compared with the incumbent's
    runs there are. With none at all there is nothing to compare with: an error, not a verdict."""
    if decision.next_run != Role.INCUMBENT or not incumbent_failing:
        return decision
    if not has_incumbent:
        raise RuntimeError("the incumbent failed every run it was measured again")
    return Decision(**{**decision.__dict__, "next_run": Role.CANDIDATE})


def procedure(
    incumbent: Sequence[float],
    floor: Floor,
    measure: Callable[[Role], float | None],
    cfg: RuleConfig = RuleConfig(),
    candidate: Sequence[float] = (),
    last: Role | None = None,
    max_incumbent_failures: int = 2,
) -> tuple[Decision, list[float], list[float]]:
    """Drive `step` to a decision: (the decision, the candidate's scores, the incumbent's scores it used).
    measure(role) makes one more run and returns its score (None: it failed). candidate and last: the runs a
    resumed decision already has, and whose run was made last. A look is taken at most once per candidate run,
    as soon as the incumbent has the runs it needs (flows/research.py takes them the same way)."""
    inc, cand = list(incumbent), list(candidate)
    failures = 0
    looked = len(cand) - 1 if last == Role.CANDIDATE else len(cand)  # a resumed decision's look is due or taken

    def at_most_one_look_per_run() -> Decision:
        nonlocal looked
        due = len(cand) > looked
        now = step(inc, cand, floor, cfg, look=due)
        if due and not math.isnan(now.delta):  # taken (not put off until the incumbent has enough runs)
            looked = len(cand)
        return now

    decision = at_most_one_look_per_run()
    while decision.verdict == Verdict.CONFIRM:
        role = steer(decision, failures >= max_incumbent_failures, bool(inc)).next_run
        score = measure(role)
        if role == Role.CANDIDATE:
            if score is None:
                return failed(decision, len(cand) + 1), cand, inc
            cand.append(score)
        elif score is None:
            failures += 1
        else:
            inc.append(score)
        decision = at_most_one_look_per_run()
    return decision, cand, inc


def current(made: Sequence[tuple[int, datetime]], since_seq: int, since_time: datetime, cfg: RuleConfig) -> list[bool]:
    """Which of the incumbent's runs (each its sequence number and time in the experiment) are current for a
    decision whose first run is since_seq, made at since_time: within window_runs runs and window_hours."""
    oldest = since_time - timedelta(hours=cfg.window_hours)
    return [seq > since_seq - cfg.window_runs and at >= oldest for seq, at in made]


def summary(d: Decision) -> str:
    """One decision in the form every reader shows (history, report, artifacts, prompt):
    "+0.46 points, 97.3% sure, 5 runs (incumbent 7); keep needs 99.86%"."""
    if math.isnan(d.delta):
        return f"no look yet, {d.n_candidate} runs (incumbent {d.n_incumbent})"
    needs = f"keep needs {_pct(d.needed)}" if d.needed is not None else f"no keep before {d.n_candidate + 1} runs"
    text = (
        f"{d.delta * 100:+.2f} points, {_pct(d.sure)} sure, {d.n_candidate} run{'s' * (d.n_candidate != 1)} "
        f"(incumbent {d.n_incumbent}); {needs}"
    )
    return f"{text}: {d.stop}" if d.stop != Stop.MORE else text


@dataclass(frozen=True)
class Bar:
    """What a candidate needs now, against the incumbent's current runs (the prompt's "margin to beat")."""

    scores: tuple[float, ...]  # the incumbent's current runs
    mean: float  # their trimmed mean: the reference
    sigma: float  # one run's noise, with the floor
    floor_sigma: float
    continue_above: float  # a first run's delta below this is discarded at once
    keep_at_min: float  # about the delta of the mean of min_keep_runs runs that keeps
    keep_at_max: float  # ... and of max_runs runs
    min_keep_runs: int
    max_runs: int
    min_delta: float


def bar(incumbent: Sequence[float], floor: Floor, cfg: RuleConfig = RuleConfig()) -> Bar | None:
    """The margins a candidate with runs as noisy as the incumbent's must beat now (None: no incumbent runs). At the
    look after k runs the incumbent has at least k runs (the procedure measures it again first)."""
    if not incumbent:
        return None
    first = compare(incumbent, [statistics.fmean(incumbent)], floor, cfg)

    def keep_margin(k: int) -> float:
        n_i = max(first.n_incumbent, k)
        dof = first.dof + (k - 1) + (n_i - first.n_incumbent)
        return max(cfg.min_delta, float(stats.t.ppf(cfg.needed(k), dof)) * first.sigma * math.sqrt(1 / n_i + 1 / k))

    continue_above = float(stats.t.ppf(cfg.futility(1), first.dof)) * first.sigma * math.sqrt(1 / first.n_incumbent + 1)
    return Bar(
        tuple(incumbent),
        first.incumbent_mean,
        first.sigma,
        floor.sigma,
        continue_above,
        keep_margin(cfg.min_keep_runs),
        keep_margin(cfg.max_runs),
        cfg.min_keep_runs,
        cfg.max_runs,
        cfg.min_delta,
    )


def _pct(p: float) -> str:
    """A probability as a percentage with the digits that matter near 100%."""
    if p >= 0.9995 or p <= 0.0005:
        return f"{p * 100:.2f}%"
    return f"{p * 100:.1f}%" if p < 0.99 else f"{p * 100:.2f}%"


def naive_decide(incumbent_best: float, candidate: float) -> Verdict:
    """What most loops do: keep any improvement over the incumbent's single (luckiest) score."""
    return Verdict.KEEP if candidate > incumbent_best else Verdict.DISCARD
