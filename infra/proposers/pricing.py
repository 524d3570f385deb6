"""
What a language-model call costs: a per-model price table in USD per million tokens.

Override or extend it with AUTORESEARCH_PRICES, a JSON file of
{"model": {"input": .., "output": .., "cache_write": .., "cache_read": ..}}.
A model missing from the table costs its "default" entry, so a cap still holds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

# USD per million tokens, as listed when this table was written; cache writes are 1.25x input, reads 0.1x.
# Check the provider's current price sheet and override with AUTORESEARCH_PRICES when they change.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "claude-sonnet-4-6": {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.3},
    "claude-opus-4-1": {"input": 15.0, "output": 75.0, "cache_write": 18.75, "cache_read": 1.5},
    "claude-opus-4-5": {"input": 5.0, "output": 25.0, "cache_write": 6.25, "cache_read": 0.5},
    "claude-sonnet-4-5": {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.3},
    "claude-haiku-4-5": {"input": 1.0, "output": 5.0, "cache_write": 1.25, "cache_read": 0.1},
    # local models through an OpenAI-compatible server cost nothing per token
    "local": {"input": 0.0, "output": 0.0, "cache_write": 0.0, "cache_read": 0.0},
    "default": {"input": 15.0, "output": 75.0, "cache_write": 18.75, "cache_read": 1.5},
}


MAX_TOKENS = 10**9  # per field of one call: more is a server's error or a lie


class ImpossibleUsage(ValueError):
    """A model server reported token counts no call can have (a number too large for the store, a negative one
    that would lower the total cost and lift the spending cap, NaN, text)."""


@dataclass(frozen=True)
class Usage:
    """Token counts of one call, as the provider reported them: whole numbers in [0, MAX_TOKENS], checked here
    (the SDKs build their responses without checking them)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
                raise ImpossibleUsage(f"the model server reported {name} = {str(value)[:40]!r}, not a count of tokens")


def price_table() -> dict[str, dict[str, float]]:
    table = dict(DEFAULT_PRICES)
    path = os.environ.get("AUTORESEARCH_PRICES")
    if path:
        try:
            table.update(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read price table AUTORESEARCH_PRICES={path}: {exc}") from exc
    return table


def prices_for(model: str, table: dict[str, dict[str, float]] | None = None) -> dict[str, float]:
    table = table or price_table()
    return table.get(model) or table["default"]


def cost_usd(usage: Usage, model: str, table: dict[str, dict[str, float]] | None = None) -> float:
    p = prices_for(model, table)
    return (
        usage.input_tokens * p["input"]
        + usage.output_tokens * p["output"]
        + usage.cache_write_tokens * p["cache_write"]
        + usage.cache_read_tokens * p["cache_read"]
    ) / 1e6


def worst_case_cost_usd(prompt_chars: int, max_output_tokens: int, model: str) -> float:
    """An upper bound before a call: every prompt character a token written to the cache, full output."""
    p = prices_for(model)
    return (prompt_chars * max(p["input"], p["cache_write"]) + max_output_tokens * p["output"]) / 1e6
