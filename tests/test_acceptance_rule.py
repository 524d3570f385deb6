"""The sequential acceptance rule on synthetic noisy scores, no Prefect, no training. Every simulation has a fixed
RNG seed and enough trials that a bound it checks cannot pass by luck: the binomial margins are stated."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta

import pytest
from scipy import stats

from infra.records import DecisionRecord, MeasuredRun, RunUsed, Status
from infra.research.acceptance_rule import (
    Floor,
    Role,
    RuleConfig,
    Stop,
    bar,
    compare,
    naive_decide,
    noise_floor,
    procedure,
    step,
    summary,
    trimmed,
)
from infra.research.evidence import decision_record, evidence

# Noise measured here: the baseline recipe over 6 seeds at a 20 s budget.
BASELINE_SCORES = [0.761, 0.835, 0.838, 0.841, 0.844, 0.846]
MEAN = 0.85
CFG = RuleConfig()


def floor_of(sigma: float, rng: random.Random) -> Floor:
    """A mid-night floor: 6 earlier iterations of 3 runs each, from the same noise."""
    return noise_floor([[rng.gauss(MEAN, sigma) for _ in range(3)] for _ in range(6)], CFG)


def kept_share(
    gain: float, sigma: float, trials: int, seed: int, cfg: RuleConfig = CFG, tail: float = 0.0
) -> tuple[float, float]:
    """(share of candidates kept, mean runs per candidate, the incumbent's included) by the whole procedure."""
    rng = random.Random(seed)
    noise = lambda: rng.gauss(0, sigma) - (0.04 if tail and rng.random() < tail else 0.0)  # noqa: E731
    kept = runs = 0
    for _ in range(trials):
        floor = floor_of(sigma, rng)
        incumbent = [MEAN + noise() for _ in range(cfg.incumbent_runs)]

        def measure(role: Role) -> float:
            nonlocal runs
            runs += 1
            return MEAN + (gain if role == Role.CANDIDATE else 0.0) + noise()

        decision, _, _ = procedure(incumbent, floor, measure, cfg)
        kept += decision.verdict == "keep"
    return kept / trials, runs / trials


def at_most(share: float, p: float, trials: int) -> bool:
    """share is not above p beyond 3 binomial standard errors (a fixed seed: this is a margin, not luck)."""
    return share <= p + 3 * math.sqrt(p * (1 - p) / trials)


def test_no_change_is_kept_at_most_one_percent_of_the_time():
    for sigma, seed in ((0.002, 1), (0.005, 2)):
        share, _ = kept_share(0.0, sigma, 3000, seed)
        assert at_most(share, 0.01, 3000), (sigma, share)


def test_the_naive_rule_keeps_about_half_of_the_no_change_candidates():
    rng = random.Random(3)
    naive = sum(naive_decide(rng.gauss(MEAN, 0.002), rng.gauss(MEAN, 0.002)) == "keep" for _ in range(2000))
    assert 900 < naive < 1100


def test_a_half_point_gain_at_quiet_noise_is_kept_and_a_third_of_a_point_often():
    share, _ = kept_share(0.005, 0.002, 1500, 4)
    assert share >= 0.8, share  # the old rule: 0.0-0.2%
    share, _ = kept_share(0.003, 0.002, 1500, 5)
    assert share >= 0.4, share
    share, _ = kept_share(0.02, 0.005, 500, 6)  # a structural jump, noisy recipe
    assert share >= 0.97, share


def test_a_clearly_worse_candidate_costs_one_run():
    rng = random.Random(7)
    floor = floor_of(0.002, rng)
    incumbent = [MEAN + rng.gauss(0, 0.002) for _ in range(2)]
    made = []
    decision, cand, inc = procedure(incumbent, floor, lambda role: made.append(role) or MEAN - 0.02, CFG)
    assert decision.verdict == "discard" and decision.stop == Stop.WORSE
    assert made == [Role.CANDIDATE] and cand == [MEAN - 0.02]


def test_the_cap_ends_a_candidate_that_never_becomes_sure():
    """A candidate exactly as good as the incumbent, on scripted scores that keep it near the futility line: the
    procedure stops at max_runs candidate runs, discarded with 'cap reached', never beyond."""
    cfg = RuleConfig(max_runs=5, futility_first=0.0, futility_last=0.0)
    rng = random.Random(8)
    floor = Floor(0.002, 20, pooled=True)
    counts = {Role.CANDIDATE: 0, Role.INCUMBENT: 0}

    def measure(role: Role) -> float:
        counts[role] += 1
        return MEAN + rng.gauss(0, 0.0001)

    decision, cand, inc = procedure([MEAN, MEAN], floor, measure, cfg)
    assert decision.stop == Stop.CAP and decision.verdict == "discard"
    assert counts[Role.CANDIDATE] == 5 == len(cand) and len(inc) >= 5  # the incumbent caught up before each look


def test_a_keep_needs_two_runs_and_every_run():
    floor = Floor(0.002, 20, pooled=True)
    one = step([MEAN, MEAN + 0.001], [MEAN + 0.05], floor)
    assert one.verdict == "confirm" and one.needed is None  # +5 points on one run: one more run first
    two = step([MEAN, MEAN + 0.001], [MEAN + 0.05, MEAN + 0.049], floor)
    assert two.verdict == "keep" and two.stop == Stop.KEPT and two.sure >= two.needed
    scores = iter([MEAN + 0.05, None])
    decision, cand, _ = procedure([MEAN, MEAN + 0.001], floor, lambda role: next(scores), CFG)
    assert decision.verdict == "discard" and decision.stop == Stop.FAILED and "run 2" in decision.note


def test_alpha_is_spent_over_the_looks_and_sums_to_the_rule():
    spent = [1 - CFG.needed(k) for k in range(CFG.min_keep_runs, CFG.max_runs + 1)]
    assert CFG.needed(1) is None and CFG.needed(CFG.max_runs + 1) is None
    assert sum(spent) == pytest.approx(1 - CFG.confidence)
    assert spent == sorted(spent)  # less at early looks (SPENDING_POWER > 1)


def test_heavy_tails_do_not_raise_every_threshold():
    """The shipped baseline's heavy tail (one seed in six near 0.76) and a run a kept candidate spoiled on purpose
    (the red team's [0.8785, 0.0952, 0.8785] froze the experiment at a threshold of 1.374)."""
    groups = [[0.8400, 0.8421, 0.8395], [0.8500, 0.8488], [0.8610, 0.8622, 0.8600]]
    tame = noise_floor(groups, CFG)
    wild = noise_floor(groups + [[0.8412, 0.7610, 0.8436]], CFG)
    assert wild.sigma < 3 * tame.sigma  # 15 times when the wild run was averaged in
    without = compare(BASELINE_SCORES[1:], [0.86, 0.86], tame, CFG)
    with_tail = compare(BASELINE_SCORES, [0.86, 0.86], tame, CFG)
    assert with_tail.threshold < 2.5 * without.threshold  # averaged in, the wild run's sd (0.033) would make it 5x
    assert with_tail.incumbent_mean > 0.83  # the wild run dropped, not averaged in
    spoiled = [0.8785, 0.0952, 0.8785]
    assert trimmed(spoiled, tame) == [0.8785, 0.8785]
    assert step(spoiled, [0.93, 0.931], tame).next_run == Role.INCUMBENT  # a wild run: a clear majority first
    five = spoiled + [0.8790, 0.8781]
    assert step(five, [0.93, 0.931], tame).verdict == "keep"  # +5 points over its typical run is seen
    copy = step(five, [0.8785, 0.8786], tame)
    assert copy.verdict != "keep" and copy.threshold < 0.05


def test_heavy_tailed_noise_bounds_the_false_keep_rate():
    """One run in six 4 points low (20 sigma): an incumbent whose only runs are all wild (2.8% of fresh pairs) cannot
    be told from a good one, so no-better candidates are kept 3.6% of the time here, not under 1%; dropping wild runs
    and asking for a majority keeps it from the 5.7% that clipping them gave (docs/benchmarks.md)."""
    share, _ = kept_share(0.0, 0.002, 3000, 9, tail=1 / 6)
    assert at_most(share, 0.04, 3000), share


def test_the_floor_is_pooled_from_the_experiments_runs_and_falls_back_to_the_prior():
    assert noise_floor([], CFG) == Floor(CFG.prior_sigma, CFG.prior_dof, pooled=False)
    assert noise_floor([[0.9]], CFG).pooled is False  # one run says nothing of the noise
    rng = random.Random(10)
    pooled = noise_floor([[rng.gauss(MEAN, 0.002) for _ in range(3)] for _ in range(40)], CFG)
    assert pooled.pooled and pooled.sigma == pytest.approx(0.002, rel=0.15) and pooled.dof == 20  # capped


def test_a_candidate_whose_runs_vary_far_more_than_the_incumbents_is_not_kept():
    """The red team's freeze: a candidate kept its first run strong and stepped the others down; kept, its spread
    raised the next threshold from 0.017 to 0.068. Its runs' spread is tested against the incumbent's noise."""
    incumbent = [0.8200, 0.8215, 0.8190]
    floor = Floor(0.0012, 12, pooled=True)
    stepped = [0.8653, 0.8541, 0.8234, 0.8800, 0.8390, 0.8712, 0.8260, 0.8745]
    early = step(incumbent, stepped[:4], floor)  # four runs may be spread by chance: it is measured on
    assert early.stop == Stop.MORE and early.next_run is not None, early
    spread = step(incumbent + [0.8205] * 4, stepped, floor)  # at the cap it is still spread: refused
    assert spread.verdict == "discard" and spread.stop == Stop.SPREAD and "vary far more" in spread.note
    steady = step(incumbent, [0.8553, 0.8541, 0.8560], floor)
    assert steady.verdict == "keep", steady


def test_the_procedure_resumed_between_two_runs_ends_as_it_would_have():
    """Cut after each of its runs, given the runs made so far and whose was last, the procedure asks for exactly the
    runs the uninterrupted one made next, and ends with the same decision."""
    rng = random.Random(11)
    floor = floor_of(0.002, rng)
    for trial in range(40):
        script = random.Random(trial)
        draws = {
            Role.CANDIDATE: [MEAN + 0.004 + script.gauss(0, 0.002) for _ in range(8)],
            Role.INCUMBENT: [MEAN + script.gauss(0, 0.002) for _ in range(10)],
        }
        log: list[Role] = []

        def measure(role: Role) -> float:  # the incumbent's first two draws are its runs before the decision
            log.append(role)
            return draws[role][sum(r == role for r in log) - 1 + (2 if role == Role.INCUMBENT else 0)]

        whole, cand, inc = procedure(draws[Role.INCUMBENT][:2], floor, measure, CFG)
        made = list(log)
        for cut in range(1, len(made)):
            log = made[:cut]
            c = [draws[Role.CANDIDATE][j] for j in range(sum(r == Role.CANDIDATE for r in log))]
            i = draws[Role.INCUMBENT][: 2 + sum(r == Role.INCUMBENT for r in log)]
            resumed, _, _ = procedure(i, floor, measure, CFG, candidate=c, last=log[-1])
            assert log == made and resumed == whole, (trial, cut)


def test_drift_a_slower_machine_halfway_causes_no_burst_of_false_discards():
    """A night at sigma 0.002 whose scores all drop 0.3 points halfway (a 10% slower machine): in the 40 candidates
    after the drop, real gains are kept about as often as before it (benchmarks/decision_power.py has the night)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import decision_power as dp

    records = []
    for n in range(12):
        records += dp.night(dp.gaussian(0.002), random.Random(f"drift-{n}"), CFG, 400, 0.003)["record"]
    rate = lambda period: [r["kept"] for r in records if r["period"] == period and r["gain"] >= 0.003]  # noqa: E731
    before, after = rate(0), rate(1)
    assert sum(before) / len(before) > 0.8
    # the transition's keep rate is not lower than before beyond 3 standard errors of its own count
    p = sum(before) / len(before)
    assert sum(after) / len(after) >= p - 3 * math.sqrt(p * (1 - p) / len(after)), (len(after), sum(after))
    nulls = [r["kept"] for r in records if r["gain"] <= 0]
    assert at_most(sum(nulls) / len(nulls), 0.01, len(nulls))


def run(seq: int, iteration: int, decided_in: int, score: float | None, at: datetime, remeasured: bool = False):
    return MeasuredRun(
        seq=seq,
        iteration=iteration,
        decided_in=decided_in,
        seed=seq * 7,
        made_at=at,
        status=Status.OK if score is not None else Status.CRASHED,
        val_accuracy=score,
        remeasured=remeasured,
    )


def test_evidence_uses_the_incumbents_current_runs_only():
    t0 = datetime(2026, 12, 4, 22, 0)
    cfg = RuleConfig(window_runs=10, window_hours=2)
    runs = [run(1, 0, 0, 0.84, t0), run(2, 0, 0, 0.85, t0)]  # the baseline
    runs += [run(3 + k, k + 1, k + 1, 0.80, t0 + timedelta(minutes=k)) for k in range(10)]  # ten discarded, one run
    runs += [run(13, 0, 11, 0.845, t0 + timedelta(minutes=20))]  # the incumbent again, for iteration 11
    runs += [run(14, 11, 11, 0.86, t0 + timedelta(minutes=21)), run(15, 11, 11, None, t0, remeasured=False)]
    found = evidence(runs, 11, 0, cfg, (16, t0 + timedelta(minutes=30)))
    assert [r.seq for r in found.incumbent] == [13]  # runs 1 and 2 are more than 10 runs before the decision began
    assert [r.seq for r in found.candidate] == [14, 15] and found.failed_run == 2
    assert found.last == Role.CANDIDATE
    late = evidence(runs[:2], 1, 0, cfg, (3, t0 + timedelta(hours=3)))  # a resume the next night: too old
    assert late.incumbent == []
    assert found.floor.pooled  # the baseline's two runs
    record = decision_record(step([0.845, 0.846], [0.86], found.floor), found)
    assert record.candidate_runs[0] == RunUsed(seq=14, seed=98, score=0.86)
    assert record.summary.startswith("+1.45 points")
    assert DecisionRecord.from_stored(record.as_stored()) == record  # stored as JSON, read back as the same record


def test_a_remeasured_run_never_counts():
    t0 = datetime(2026, 12, 4, 22, 0)
    runs = [
        run(1, 0, 0, 0.84, t0),
        run(2, 0, 0, 0.85, t0),
        run(3, 1, 1, 0.99, t0, remeasured=True),
        run(4, 1, 1, 0.86, t0),
    ]
    found = evidence(runs, 1, 0, CFG, (5, t0))
    assert found.scores(Role.CANDIDATE) == [0.86]


def test_summary_and_bar_say_what_a_decision_rested_on():
    floor = Floor(0.002, 12, pooled=True)
    d = step([MEAN, MEAN + 0.001, MEAN - 0.001, MEAN], [MEAN + 0.0046] * 5, floor)
    text = summary(d)
    assert text.startswith("+0.46 points, ") and "5 runs (incumbent 4)" in text and "keep needs 99." in text
    assert f"{d.sure * 100:.2f}%" in text
    margins = bar([MEAN, MEAN + 0.001], floor)
    assert 0 < margins.continue_above < margins.keep_at_max < margins.keep_at_min
    # the margin after 2 runs is what step needs: just above it keeps, just below it does not
    above = step([MEAN, MEAN + 0.001], [margins.mean + margins.keep_at_min * 1.05] * 2, floor)
    below = step([MEAN, MEAN + 0.001], [margins.mean + margins.keep_at_min * 0.95] * 2, floor)
    assert above.verdict == "keep" and below.verdict != "keep"


def test_t_quantiles_are_scipys():
    d = compare([0.84, 0.85], [0.86], Floor(0.005, 2, pooled=False), CFG)
    se = d.sigma * math.sqrt(1 / 2 + 1)
    assert d.sure == pytest.approx(stats.t.cdf(d.delta / se, d.dof))


def test_rejects_bad_settings_and_empty_scores():
    with pytest.raises(ValueError):
        compare([], [0.5], Floor(0.005, 2, False), CFG)
    with pytest.raises(ValueError):
        RuleConfig(min_keep_runs=9, max_runs=8)
    with pytest.raises(ValueError):
        RuleConfig(confidence=1.5)
