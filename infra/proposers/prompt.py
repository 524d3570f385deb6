"""
One request's text in the order Anthropic caches it (tools -> system -> messages), so that the propose, fix and revise
calls of an iteration share one prefix: both tools (tool_schema.py), then

    system   the fixed text (prompt_text.py)                                  [cache breakpoint]
    system   the experiment's whole program.md (Goal, Rules, Strategy)      [cache breakpoint]
    user     the incumbent train.py                                         [cache breakpoint]
    user     the situation (situation.py)                                   [cache breakpoint]
    user     the task: propose, fix a crashed candidate, or revise the strategy

`python -m infra.proposers.prompt_example` prints a whole request (docs/agent.md's "What the model sees").
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.proposers.base import Proposal, ProposalContext
from infra.proposers.prompt_text import FIXED_TEXT
from infra.proposers.situation import situation

# Anthropic caches a prefix only from this many tokens on (Sonnet; Opus and Haiku need more or as much).
MIN_CACHEABLE_TOKENS = 1024
CHARS_PER_TOKEN = 4  # a conservative estimate for English and code (tokenizers average about 4 or fewer)


@dataclass(frozen=True)
class Prompt:
    """One request's text in cache order; each part but the task ends at a cache breakpoint."""

    fixed: str  # system: the same for every call of every experiment
    program: str  # system: the experiment's program.md (changes when the strategy is revised)
    incumbent: str  # user: the incumbent train.py
    situation: str  # user: hardware, the margin to beat, the history (the same for a propose and its fixes)
    task: str  # user: what this call asks for

    def system(self) -> list[str]:
        return [self.fixed, self.program]

    def user(self) -> list[str]:
        return [self.incumbent, self.situation, self.task]

    def chars(self) -> int:
        return sum(len(part) for part in self.system() + self.user())


def estimated_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN


def in_flight_text(ctx: ProposalContext) -> str:
    """The candidates being measured now in other slots, which a new proposal should not repeat."""
    if not ctx.in_flight:
        return ""
    lines = [
        f"- iteration {c.iteration} ({c.change_type or 'unknown'}): {' '.join(c.hypothesis.split())[:300]}"
        for c in ctx.in_flight
    ]
    return (
        "\n\nBeing measured now in other slots, against the same incumbent (their results are not in yet; do "
        "not propose these again):\n" + "\n".join(lines)
    )


def propose_task(ctx: ProposalContext) -> str:
    return (
        f"# Task\n\nPropose iteration {ctx.iteration}: one change most likely to raise validation accuracy "
        f"within the budget. Call propose_train_py.{in_flight_text(ctx)}"
    )


def fix_task(candidate: Proposal, error: str, log_tail: str) -> str:
    return (
        f"# Task\n\nYour candidate for this iteration ({candidate.hypothesis}) failed a short pre-flight run on a "
        f"small subset, before any budget was spent: {error}\n\nIts train.py:\n```python\n{candidate.code}\n```\n\n"
        f"Last lines of its output (the traceback):\n```\n{log_tail}\n```\n\n"
        "Fix it so that it runs, keeping the same idea. Call propose_train_py with the whole corrected train.py, "
        "or with edits to the failed candidate; its change type is measured against the incumbent."
    )


def revise_task(ctx: ProposalContext) -> str:
    return (
        "# Task\n\nRewrite the research strategy (the Strategy section of program.md, above) from these results: "
        "what to try next, what to stop trying, and lessons learned (for example 'normalisation changes need "
        "more epochs to show their value'). Call revise_strategy."
    )


def prompt(ctx: ProposalContext, task: str) -> Prompt:
    return Prompt(
        fixed=FIXED_TEXT,
        program=f"# program.md (this experiment's program)\n\n{ctx.program.strip()}",
        incumbent=f"# Incumbent train.py (the best so far)\n\n```python\n{ctx.incumbent_code}\n```",
        situation=situation(ctx),
        task=task,
    )
