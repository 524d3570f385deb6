"""
Benchmark: what winsorising the incumbent's runs (infra/research/acceptance_rule.py) costs and buys, on simulated
scores, 4,000 trials per cell: the rate at which a no-change candidate is kept (one run, a confirmation run for a
close call, as the loop does) with Gaussian noise, with and without winsorising; and the threshold one wild run of
the incumbent sets (the shipped baseline's heavy tail, a run a candidate spoiled) against the one without it.

Usage: python benchmarks/winsorised_rule.py [--trials 4000]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import infra.research.acceptance_rule as rule  # noqa: E402

BASELINE_SCORES = [0.761, 0.835, 0.838, 0.841, 0.844, 0.846]  # 6 seeds, 20 s budget (DESIGN.md)
SPOILED = [0.8785, 0.0952, 0.8785]  # the red team's incumbent


def no_change_kept(sigma: float, n_incumbent: int, trials: int) -> float:
    rng = random.Random(1)
    kept = 0
    for _ in range(trials):
        incumbent = [rng.gauss(0.84, sigma) for _ in range(n_incumbent)]
        candidate = [rng.gauss(0.84, sigma)]
        decision = rule.decide(incumbent, candidate)
        if decision.verdict == "confirm":
            candidate.append(rng.gauss(0.84, sigma))
            decision = rule.decide(incumbent, candidate)
        kept += decision.verdict == "keep"
    return 100 * kept / trials


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=4000)
    args = parser.parse_args()
    clip = (rule.CLIP_MADS, rule.CLIP_PRIOR_SIGMAS)
    print("| incumbent runs | sigma | no change kept, plain | winsorised |")
    print("| --- | --- | --- | --- |")
    for sigma in (0.005, 0.01, 0.02):
        for n in (3, 4):
            rule.CLIP_MADS, rule.CLIP_PRIOR_SIGMAS = float("inf"), float("inf")
            plain = no_change_kept(sigma, n, args.trials)
            rule.CLIP_MADS, rule.CLIP_PRIOR_SIGMAS = clip
            print(f"| {n} | {sigma} | {plain:.2f}% | {no_change_kept(sigma, n, args.trials):.2f}% |")
    for label, wild in (("baseline's heavy tail", BASELINE_SCORES), ("spoiled run", SPOILED)):
        tame = [x for x in wild if x > 0.8 and x != 0.761] or wild
        rule.CLIP_MADS, rule.CLIP_PRIOR_SIGMAS = float("inf"), float("inf")
        plain = rule.decide(wild, [0.86]).threshold
        rule.CLIP_MADS, rule.CLIP_PRIOR_SIGMAS = clip
        print(f"{label}: threshold plain {plain:.4f}, winsorised {rule.decide(wild, [0.86]).threshold:.4f}, "
              f"without the wild run {rule.decide(tame, [0.86]).threshold:.4f}")


if __name__ == "__main__":
    main()
