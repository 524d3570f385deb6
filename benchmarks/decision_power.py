"""
Benchmark: what the keep rule can see. The old rule (one confirmation run, an incumbent with 3 runs) and the
sequential procedure (infra/research/acceptance_rule.py) side by side, on simulated scores:

1. keep rate for true gains 0 .. +2 points, sigma 0.0015 .. 0.005, under Gaussian noise, heavy-tailed noise (one
   run in six loses 4 points: the shipped baseline's tail) and real noise (residuals of benchmarks/data/noise_bank.json,
   resampled, at each recipe's own sigma);
2. the margin a first look needs with and without a wild incumbent run (the tail must not raise every threshold);
3. a night: 400 candidates from a realistic mix (70% worse by 1-5 points, 20% within +-0.2, 10% better by 0.3-1.0),
   the incumbent re-measured as the procedure asks, every run counted (the incumbent's included): runs per candidate,
   false keeps; and the same night with the machine 10% slower from its middle on (a shift of every score by the
   noise bank's measured 20 s vs 18 s difference): keep and false-keep rates before and after.

The new procedure starts each trial as it stands mid-night: the incumbent with `incumbent_runs` current runs and a
floor pooled from 6 earlier iterations of 3 runs each (12 degrees of freedom), all drawn from the same noise.

Usage: python benchmarks/decision_power.py [--trials 2000] [--nights 4] [--seed 1]
The last line is: decision power: +0.5 at sigma 0.002 kept P%; no change kept Q%; mix R runs per candidate
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.records import Verdict  # noqa: E402
from infra.research import acceptance_rule as rule  # noqa: E402

BANK = Path(__file__).with_name("data") / "noise_bank.json"
GAINS = (0.0, 0.002, 0.003, 0.005, 0.010, 0.020)
SIGMAS = (0.0015, 0.002, 0.003, 0.005)
MEAN = 0.85
TAIL_SHARE, TAIL_DROP = 1 / 6, 0.04  # heavy tails: one run in six ends 4 points lower

Noise = Callable[[random.Random], float]  # one run's deviation from its recipe's mean


def gaussian(sigma: float) -> Noise:
    return lambda rng: rng.gauss(0.0, sigma)


def heavy(sigma: float) -> Noise:
    return lambda rng: rng.gauss(0.0, sigma) - (TAIL_DROP if rng.random() < TAIL_SHARE else 0.0)


def real_noises() -> dict[str, tuple[float, Noise]]:
    """Each recipe of the noise bank: (its sd, resampling of its centred scores)."""
    if not BANK.exists():
        return {}
    bank = json.loads(BANK.read_text())
    noises = {}
    for name, recipe in bank["recipes"].items():
        scores = [r["val_accuracy"] for r in recipe["runs"] if r["status"] == "ok" and not r.get("contended")]
        if len(scores) >= 6 and not name.endswith("slow10"):
            centre = statistics.fmean(scores)
            residuals = [x - centre for x in scores]
            noises[f"real {name}"] = (statistics.stdev(scores), lambda rng, res=residuals: rng.choice(res))
    return noises


def slowdown_shift() -> float:
    """What 10% less compute costs the small CNN, from the noise bank (mean at 20 s minus at 18 s); 0.003 without it."""
    if BANK.exists():
        recipes = json.loads(BANK.read_text())["recipes"]
        means = [
            statistics.fmean(r["val_accuracy"] for r in recipes[n]["runs"] if r["status"] == "ok")
            for n in ("small_cnn", "small_cnn_slow10")
            if n in recipes and recipes[n]["runs"]
        ]
        if len(means) == 2:
            return means[0] - means[1]
    return 0.003


# --- the old rule (as it stood before the sequential procedure), for comparison --------------------

OLD_PRIOR_SIGMA, OLD_PRIOR_DOF, OLD_CONFIDENCE, OLD_MIN_DELTA = 0.005, 2.0, 0.99, 0.002


def old_decide(incumbent: list[float], candidate: list[float]) -> tuple[str, float]:
    """(keep, discard or confirm; the threshold)."""
    from scipy import stats

    n_i, n_c = len(incumbent), len(candidate)
    dof = n_i - 1
    variance = statistics.variance(incumbent) if dof >= 1 else 0.0
    total = dof + OLD_PRIOR_DOF
    sigma = math.sqrt((dof * variance + OLD_PRIOR_DOF * OLD_PRIOR_SIGMA**2) / total)
    threshold = max(OLD_MIN_DELTA, stats.t.ppf(OLD_CONFIDENCE, total) * sigma * math.sqrt(1 / n_i + 1 / n_c))
    delta = statistics.fmean(candidate) - statistics.fmean(incumbent)
    if delta > threshold:
        return "keep", threshold
    return ("confirm" if delta > threshold / 2 and n_c <= 1 else "discard"), threshold


def old_keeps(gain: float, noise: Noise, rng: random.Random, n_incumbent: int = 3) -> bool:
    incumbent = [MEAN + noise(rng) for _ in range(n_incumbent)]
    candidate = [MEAN + gain + noise(rng)]
    verdict, _ = old_decide(incumbent, candidate)
    if verdict == "confirm":
        candidate.append(MEAN + gain + noise(rng))
        verdict, _ = old_decide(incumbent, candidate)
    return verdict == "keep"


# --- the sequential procedure ------------------------------------------------------------------


def pooled_floor(noise: Noise, rng: random.Random, cfg: rule.RuleConfig) -> rule.Floor:
    return rule.noise_floor([[MEAN + noise(rng) for _ in range(3)] for _ in range(6)], cfg)


@dataclass
class Outcome:
    kept: bool
    candidate_runs: int
    incumbent_runs: int


def new_keeps(gain: float, noise: Noise, rng: random.Random, cfg: rule.RuleConfig) -> Outcome:
    floor = pooled_floor(noise, rng, cfg)
    incumbent = [MEAN + noise(rng) for _ in range(cfg.incumbent_runs)]
    made = {rule.Role.CANDIDATE: 0, rule.Role.INCUMBENT: 0}

    def measure(role: rule.Role) -> float:
        made[role] += 1
        return MEAN + (gain if role == rule.Role.CANDIDATE else 0.0) + noise(rng)

    decision, _, _ = rule.procedure(incumbent, floor, measure, cfg)
    return Outcome(decision.verdict == Verdict.KEEP, made[rule.Role.CANDIDATE], made[rule.Role.INCUMBENT])


def keep_table(noises: dict[str, tuple[float, Noise]], trials: int, seed: int, cfg: rule.RuleConfig) -> dict:
    rates = {}
    header = "| noise | sigma | rule | " + " | ".join(f"{g * 100:+.1f}" for g in GAINS) + " |"
    print("keep rate (%) by true gain (points), " + f"{trials} trials per cell")
    print(header)
    print("|" + " --- |" * (3 + len(GAINS)))
    for label, (sigma, noise) in noises.items():
        for which in ("old", "new"):
            cells = []
            for gain in GAINS:
                rng = random.Random(f"{seed}-{label}-{gain}-{which}")
                if which == "old":
                    kept = sum(old_keeps(gain, noise, rng) for _ in range(trials))
                else:
                    kept = sum(new_keeps(gain, noise, rng, cfg).kept for _ in range(trials))
                rates[(label, which, gain)] = 100 * kept / trials
                cells.append(f"{rates[(label, which, gain)]:.1f}")
            print(f"| {label} | {sigma:.4f} | {which} | " + " | ".join(cells) + " |", flush=True)
    return rates


def margins(cfg: rule.RuleConfig) -> None:
    """The delta a keep needs at the look after 2 candidate runs, incumbent 4 runs, floor from its own noise."""
    rng = random.Random(7)
    tame = [MEAN + rng.gauss(0, 0.002) for _ in range(4)]
    wild = tame[:3] + [MEAN - TAIL_DROP]
    groups = [[MEAN + rng.gauss(0, 0.002) for _ in range(3)] for _ in range(6)]
    wild_groups = [g[:2] + [MEAN - TAIL_DROP] if i < 2 else g for i, g in enumerate(groups)]
    for label, inc, grp in (
        ("no wild run", tame, groups),
        ("a wild incumbent run", wild, groups),
        ("wild runs in the floor's iterations too", wild, wild_groups),
    ):
        floor = rule.noise_floor(grp, cfg)
        d = rule.compare(inc, [MEAN, MEAN], floor, cfg)
        print(f"margin at 2 runs, sigma 0.002, {label}: {d.threshold * 100:.2f} points (floor sigma {floor.sigma:.4f})")


def night(noise: Noise, rng: random.Random, cfg: rule.RuleConfig, candidates: int, shift: float) -> dict:
    """One simulated night; from the middle candidate on, every score is `shift` lower (a slower machine)."""
    true_mean = MEAN
    seq = 0
    incumbent: list[tuple[int, float]] = [(0, MEAN + noise(rng)), (1, MEAN + noise(rng))]  # the baseline's runs
    groups: list[list[float]] = [[s for _, s in incumbent]]
    seq = 2
    record = []
    for c in range(candidates):
        u = rng.random()
        gain = (
            -rng.uniform(0.01, 0.05)
            if u < 0.7
            else rng.uniform(-0.002, 0.002)
            if u < 0.9
            else rng.uniform(0.003, 0.010)
        )
        slow = shift if c >= candidates // 2 else 0.0
        start = seq
        inc_scores = [s for made, s in incumbent if made > start - cfg.window_runs]
        made = {rule.Role.CANDIDATE: 0, rule.Role.INCUMBENT: 0}
        new_inc: list[tuple[int, float]] = []

        def measure(role: rule.Role) -> float:
            nonlocal seq
            made[role] += 1
            score = true_mean + (gain if role == rule.Role.CANDIDATE else 0.0) - slow + noise(rng)
            if role == rule.Role.INCUMBENT:
                new_inc.append((seq, score))
            seq += 1
            return score

        decision, cand, _ = rule.procedure(inc_scores, rule.noise_floor(groups, cfg), measure, cfg)
        incumbent += new_inc
        if len(cand) >= 2:
            groups.append(cand)
        kept = decision.verdict == Verdict.KEEP
        middle = candidates // 2
        period = 0 if c < middle else 1 if c < middle + TRANSITION else 2
        record.append({"gain": gain, "kept": kept, "period": period, "runs": sum(made.values())})
        if kept:
            true_mean += gain
            incumbent = [(seq - len(cand) + j, s) for j, s in enumerate(cand)]
        groups[0] = [s for _, s in incumbent]
    return {"record": record, "runs": seq - 2}


TRANSITION = 40  # candidates after the shift in which the incumbent's current runs still mix both periods
PERIODS = ("before", f"the {TRANSITION} candidates after", "after those")


def night_report(noise: Noise, cfg: rule.RuleConfig, nights: int, seed: int, shift: float, label: str) -> float:
    """Keep rates by period of the night (a burst shows in the transition), and runs per candidate."""
    records, runs = [], 0
    for n in range(nights):
        out = night(noise, random.Random(f"{seed}-night-{n}-{shift}"), cfg, 400, shift)
        records += out["record"]
        runs += out["runs"]
    per = runs / len(records)
    for period, name in enumerate(PERIODS):
        rows = [r for r in records if r["period"] == period]
        better = [r for r in rows if r["gain"] >= 0.003]
        null = [r for r in rows if r["gain"] <= 0.0]
        print(
            f"night ({label}), {name}: real gains (+0.3 to +1.0) kept "
            f"{100 * sum(r['kept'] for r in better) / len(better):.1f}% "
            f"of {len(better)}; no-better kept {100 * sum(r['kept'] for r in null) / len(null):.2f}% of {len(null)}"
        )
    print(f"night ({label}): {per:.2f} runs per candidate (the incumbent's included), {nights} nights of 400")
    return per


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--nights", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    cfg = rule.RuleConfig()
    noises: dict[str, tuple[float, Noise]] = {}
    for sigma in SIGMAS:
        noises[f"gaussian {sigma}"] = (sigma, gaussian(sigma))
    for sigma in SIGMAS:
        noises[f"heavy {sigma}"] = (sigma, heavy(sigma))
    noises.update(real_noises())
    rates = keep_table(noises, args.trials, args.seed, cfg)
    margins(cfg)
    shift = slowdown_shift()
    per = night_report(gaussian(0.002), cfg, args.nights, args.seed, 0.0, "sigma 0.002, steady")
    for sign, how in ((1, "slower"), (-1, "faster")):
        night_report(
            gaussian(0.002),
            cfg,
            5 * args.nights,
            args.seed,
            sign * shift,
            f"sigma 0.002, 10% {how} from the middle: every score {-sign * shift * 100:+.2f} points",
        )
    print(f"+0.3 at sigma 0.002 kept {rates[('gaussian 0.002', 'new', 0.003)]:.1f}%")
    print(
        f"decision power: +0.5 at sigma 0.002 kept {rates[('gaussian 0.002', 'new', 0.005)]:.1f}%; "
        f"no change kept {rates[('gaussian 0.002', 'new', 0.0)]:.1f}%; mix {per:.2f} runs per candidate"
    )


if __name__ == "__main__":
    main()
