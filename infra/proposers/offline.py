"""
The offline proposer: a parametric searcher over train.py's UPPER_CASE constants. No LLM.

It is a baseline searcher, not an agent: it never changes the model's structure,
only numbers and switches, so the loop runs anywhere (and tests run without a key).

- One constant per proposal, rewritten through the AST (always valid Python).
- Step sizes adapt per constant by the 1/5th success rule: a kept change grows the
  step by 1.5x, a discarded one shrinks it by 1.5^(1/4), so a fifth of tries succeeding
  holds it steady. Steps are recomputed from the history, so resume needs no state:
  each move is stored with its iteration as structured memory (constant, old, new).
- A candidate that crashes its pre-flight is not fixed (no model to ask): the iteration
  is recorded as failed and the search goes on.
- Strategy revision reads the history, re-weights which constants to try and which
  direction, and writes that as a readable Strategy section with a JSON block the
  next proposals read.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import defaultdict
from typing import Any

from infra.proposers.base import CannotFix, Proposal, ProposalContext, Revision
from infra.records import ChangeType, IterationRecord, Verdict
from infra.research.code_edit import UNIT_INTERVAL_HINTS, Number, set_constants, tunable_constants

INITIAL_LOG_STEP = math.log(2.0)
GROW, SHRINK = 1.5, 1.5**-0.25
SEARCH_BLOCK = re.compile(r"```json offline-search\n(.*?)\n```", re.DOTALL)


def parse_search_block(strategy: str) -> dict[str, Any]:
    match = SEARCH_BLOCK.search(strategy or "")
    if not match:
        return {}
    try:
        return json.loads(match.group(1))
    except json.JSONDecodeError:
        return {}


def _offline_tries(history: list[IterationRecord]) -> list[tuple[str, float, float, bool, float]]:
    """(name, old, new, kept, delta) for every decided move of this searcher, from its stored memory."""
    tries = []
    for item in history:
        move = item.memory
        if "constant" in move and item.verdict in (Verdict.KEEP, Verdict.DISCARD):
            old, new = float(move["old"]), float(move["new"])  # a switch: False -> True reads as 0 -> 1
            tries.append((move["constant"], old, new, item.verdict == Verdict.KEEP, item.decision.delta or 0.0))
    return tries


def step_sizes(history: list[IterationRecord]) -> dict[str, float]:
    """Per-constant log-step after replaying the 1/5th success rule over the history."""
    steps: dict[str, float] = defaultdict(lambda: INITIAL_LOG_STEP)
    for name, _, _, kept, _ in _offline_tries(history):
        steps[name] = min(3.0, max(0.05, steps[name] * (GROW if kept else SHRINK)))
    return steps


def _perturb(name: str, value: Number, step: float, up: bool, rng: random.Random) -> Number:
    if isinstance(value, bool):
        return not value
    factor = math.exp(step if up else -step)
    if isinstance(value, int):
        new = max(1, round(value * factor))
        return new if new != value else max(1, value + (1 if up else -1))
    if value == 0.0:  # multiplicative steps cannot leave zero: start log-uniformly in [1e-4, 0.5]
        return float(f"{10 ** rng.uniform(-4, math.log10(0.5)):.3g}")
    new = value * factor
    if any(h in name for h in UNIT_INTERVAL_HINTS):
        new = min(new, 0.99)
    return float(f"{new:.4g}")


MAX_DRAWS = 20  # draws of a move before one that is not being measured now is given up on


class OfflineProposer(CannotFix):
    name = "offline"

    def propose(self, ctx: ProposalContext) -> Proposal | None:
        constants = tunable_constants(ctx.incumbent_code)
        if not constants:
            return None
        search = parse_search_block(ctx.strategy)
        weights = search.get("weights", {})
        p_up = search.get("p_up", {})
        rng = random.Random(f"offline-{ctx.seed}-{ctx.iteration}")  # same iteration, same proposal on resume
        names = list(constants)
        measuring = {c.code for c in ctx.in_flight}
        for _ in range(MAX_DRAWS):  # a move being measured now in another slot is drawn again
            name = rng.choices(names, weights=[max(0.01, float(weights.get(n, 1.0))) for n in names])[0]
            up = rng.random() < float(p_up.get(name, 0.5))
            step = step_sizes(ctx.history)[name]
            old = constants[name]
            new = _perturb(name, old, step, up, rng)
            if new == old:  # a degenerate step: force a visible change
                new = _perturb(name, old, step * 2, not up, rng)
            code = set_constants(ctx.incumbent_code, {name: new})
            if code not in measuring:
                break
        return Proposal(
            hypothesis=f"Set {name} from {old} to {new}",
            change_type=ChangeType.PARAMETRIC,
            code=code,
            expected_effect=f"log-step {step:.2f} {'up' if up else 'down'}",
            memory={"constant": name, "old": old, "new": new},
        )

    def revise_strategy(self, ctx: ProposalContext) -> Revision:
        tries = _offline_tries(ctx.history)
        constants = tunable_constants(ctx.incumbent_code)
        stats: dict[str, dict[str, float]] = {
            n: {"tries": 0, "keeps": 0, "up_keeps": 0, "down_keeps": 0, "up_fails": 0, "down_fails": 0, "best": 0.0}
            for n in constants
        }
        for name, old, new, kept, delta in tries:
            s = stats.setdefault(
                name,
                {"tries": 0, "keeps": 0, "up_keeps": 0, "down_keeps": 0, "up_fails": 0, "down_fails": 0, "best": 0.0},
            )
            direction = "up" if new > old else "down"
            s["tries"] += 1
            s["keeps"] += kept
            s[f"{direction}_{'keeps' if kept else 'fails'}"] += 1
            s["best"] = max(s["best"], delta)
        weights, p_up, lines, lessons = {}, {}, [], []
        steps = step_sizes(ctx.history)
        for name, s in stats.items():
            weights[name] = round((1 + 2 * s["keeps"]) / (1 + 0.5 * s["tries"]), 3)
            ups = 1 + s["up_keeps"] + s["down_fails"]  # a failed step down is weak evidence for up
            downs = 1 + s["down_keeps"] + s["up_fails"]
            p_up[name] = round(ups / (ups + downs), 3)
            lines.append(
                f"- {name} (now {constants.get(name)}): {int(s['tries'])} tries, {int(s['keeps'])} kept, "
                f"best delta {s['best']:+.4f}; weight {weights[name]}, P(up) {p_up[name]}, "
                f"log-step {steps[name]:.2f}"
            )
            if s["keeps"]:
                lessons.append(f"{name}: kept {int(s['keeps'])} of {int(s['tries'])} changes")
            elif s["tries"] >= 3:
                lessons.append(f"{name}: {int(s['tries'])} changes, none beat the noise; tried less from now on")
        block = json.dumps({"weights": weights, "p_up": p_up}, indent=2, sort_keys=True)
        text = (
            f"Offline parametric search, revised after iteration {ctx.iteration - 1} "
            f"({len(tries)} parametric tries so far).\n\n"
            "Try one constant at a time; constants with kept changes get more weight, constants whose "
            "changes never beat the noise get less; move in the direction that has worked.\n\n"
            + "\n".join(lines)
            + f"\n\n```json offline-search\n{block}\n```\n"
        )
        return Revision(text, "\n".join(lessons) or "no parametric change has been kept yet")
