"""
The Optuna searcher's search space: one distribution per UPPER_CASE constant of train.py.

Inferred from each constant's type and value, and overridable in program.md with a fenced block:

    ```json optuna-space
    {"LEARNING_RATE": {"low": 0.001, "high": 0.3, "log": true},
     "BATCH_SIZE": {"choices": [32, 64, 128, 256]},
     "MOMENTUM": "fixed"}
    ```

Inferred ranges (a constant the block does not name):
- a boolean: both values;
- an integer: a log scale from a quarter to four times its value (sizes, epochs, widths);
- a float whose name says it is a rate or a decay (LR, LEARNING_RATE, WEIGHT_DECAY, EPS): a log scale over a
  factor of ten either way, or from 1e-6 to 1e-2 when it is zero (a log scale cannot hold zero);
- a float whose name says it lives in [0, 1) (MOMENTUM, DROPOUT, BETA, SMOOTHING): uniform on [0, 0.99];
- any other float: a log scale from a quarter to four times its value, uniform on [0, 1] when it is zero, and
  mirrored for a negative one.

program.md is the operator's file, but it is checked like any input: a block that is not JSON, names a constant
train.py does not have, or gives a range that cannot be drawn from is refused with the reason (SpaceError).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from infra.proposers.base import ProposerError
from infra.research.code_edit import UNIT_INTERVAL_HINTS, Number, tunable_constants

SPACE_BLOCK = re.compile(r"```json optuna-space[ \t]*\n(.*?)\n```", re.DOTALL)
RATE_HINTS = ("LR", "LEARNING_RATE", "WEIGHT_DECAY", "DECAY", "EPS")
FIXED = "fixed"
RANGE_KEYS = {"low", "high", "log", "step"}
MAX_CHOICES = 64


class SpaceError(ProposerError):
    """A search-space block in program.md that cannot be used."""


def _named(name: str, hints: tuple[str, ...]) -> bool:
    return any(part in hints for part in name.split("_")) or any(name.endswith(h) for h in hints)


def inferred(name: str, value: Number) -> BaseDistribution:
    """The distribution a constant gets when program.md does not name it."""
    if isinstance(value, bool):
        return CategoricalDistribution([False, True])
    if isinstance(value, int):
        if value <= 0:
            return IntDistribution(value - 4, value + 4)
        return IntDistribution(max(1, value // 4), max(value * 4, 2), log=True)
    if _named(name, RATE_HINTS):
        if value > 0:
            return FloatDistribution(value / 10, value * 10, log=True)
        if value == 0:
            return FloatDistribution(1e-6, 1e-2, log=True)
    if _named(name, UNIT_INTERVAL_HINTS) and 0 <= value < 1:
        return FloatDistribution(0.0, 0.99)
    if value == 0:
        return FloatDistribution(0.0, 1.0)
    low, high = sorted((value / 4, value * 4))
    return FloatDistribution(low, high, log=value > 0)


def _number(name: str, key: str, raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise SpaceError(f"optuna-space: {name}.{key} must be a finite number, got {raw!r}")
    return raw


def _from_block(name: str, value: Number, spec: Any) -> BaseDistribution | None:
    """The distribution the block gives a constant (None: fixed at its value)."""
    if spec == FIXED:
        return None
    if not isinstance(spec, dict):
        raise SpaceError(f'optuna-space: {name} must be "fixed", {{"low": .., "high": ..}} or {{"choices": [..]}}')
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not 1 <= len(choices) <= MAX_CHOICES:
            raise SpaceError(f"optuna-space: {name}: choices must be a list of 1 to {MAX_CHOICES} values, alone")
        for choice in choices:
            if type(choice) is not type(value) and not (isinstance(value, float) and type(choice) is int):
                raise SpaceError(f"optuna-space: {name} is a {type(value).__name__}; choice {choice!r} is not")
        return CategoricalDistribution([float(c) if isinstance(value, float) else c for c in choices])
    unknown = set(spec) - RANGE_KEYS
    if unknown or not {"low", "high"} <= set(spec):
        raise SpaceError(f"optuna-space: {name} needs low and high (and may have log, step); got {sorted(spec)}")
    if isinstance(value, bool):
        raise SpaceError(f'optuna-space: {name} is a switch: give {{"choices": [false, true]}} or "fixed"')
    low, high = _number(name, "low", spec["low"]), _number(name, "high", spec["high"])
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"optuna-space: {name}.log must be true or false")
    if not low < high:
        raise SpaceError(f"optuna-space: {name}: low {low} must be below high {high}")
    if log and low <= 0:
        raise SpaceError(f"optuna-space: {name}: a log scale needs low above 0 (got {low})")
    step = spec.get("step")
    if step is not None:
        step = _number(name, "step", step)
        if step <= 0 or log:
            raise SpaceError(f"optuna-space: {name}: step must be above 0, and not with a log scale")
    if isinstance(value, int):
        if any(float(v) != int(v) for v in (low, high, step or 1)):
            raise SpaceError(f"optuna-space: {name} is an integer: low, high and step must be whole numbers")
        return IntDistribution(int(low), int(high), log=log, step=int(step or 1))
    return FloatDistribution(float(low), float(high), log=log, step=step)


def parse_block(program: str) -> dict[str, Any]:
    """The optuna-space block of program.md as JSON ({} when there is none)."""
    blocks = SPACE_BLOCK.findall(program or "")
    if not blocks:
        return {}
    if len(blocks) > 1:
        raise SpaceError(f"program.md has {len(blocks)} optuna-space blocks; give one")
    try:
        found = json.loads(blocks[0])
    except json.JSONDecodeError as exc:
        raise SpaceError(f"optuna-space block in program.md is not JSON: {exc}") from None
    if not isinstance(found, dict):
        raise SpaceError("optuna-space block in program.md must be a JSON object of constant names")
    return found


def search_space(train_py: str, program: str) -> dict[str, BaseDistribution]:
    """The distributions of the constants searched, in file order; raises SpaceError for a block that cannot be
    used, or when nothing is left to search."""
    constants = tunable_constants(train_py)
    block = parse_block(program)
    unknown = sorted(set(block) - set(constants))
    if unknown:
        raise SpaceError(
            f"optuna-space names {', '.join(unknown)}, not tunable constants of train.py "
            f"(it has {', '.join(constants) or 'none'})"
        )
    space = {}
    for name, value in constants.items():
        distribution = _from_block(name, value, block[name]) if name in block else inferred(name, value)
        if distribution is not None:
            space[name] = distribution
    if not space:
        raise SpaceError("nothing to search: train.py has no UPPER_CASE constant left free")
    return space


def describe(distribution: BaseDistribution) -> str:
    """One distribution as a researcher reads it: `[0.01, 1] log`, `{32, 64}`."""
    if isinstance(distribution, CategoricalDistribution):
        return "{" + ", ".join(repr(c) for c in distribution.choices) + "}"
    scale = " log" if distribution.log else ""
    step = f" step {distribution.step:g}" if getattr(distribution, "step", None) not in (None, 1) else ""
    return f"[{distribution.low:g}, {distribution.high:g}]{scale}{step}"
