"""The proposer contract: what a proposer sees, and what it must return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from infra.records import ChangeType, IterationRecord
from infra.research.acceptance_rule import Bar, RuleConfig


class ProposerError(ValueError):
    """A proposer spec that cannot be used."""


class StopResearch(RuntimeError):
    """The proposer cannot go on (the spending cap, say): the loop ends cleanly."""


@dataclass
class Proposal:
    hypothesis: str
    change_type: ChangeType
    code: str
    expected_effect: str = ""
    error: str = ""  # set when the proposer failed to produce a valid candidate
    calls: list[dict[str, Any]] = field(default_factory=list)  # language-model calls and their cost
    memory: dict[str, Any] = field(default_factory=dict)  # stored with the iteration; the proposer reads it back


@dataclass
class Revision:
    strategy: str  # the new Strategy section of program.md
    lessons: str  # lessons learned, one per line
    calls: list[dict[str, Any]] = field(default_factory=list)  # language-model calls and their cost


@dataclass(frozen=True)
class InFlight:
    """A candidate being measured now in another slot: the proposer should not propose it again."""

    iteration: int
    hypothesis: str
    change_type: ChangeType
    code: str


@dataclass(frozen=True)
class Hardware:
    """The machine and the compute every candidate gets, as the proposer is told them."""

    device: str  # cpu, cuda:N, mps
    budget_s: float
    cpu_threads: int | None = None  # allotted cores on a CPU clock; None on a GPU (wall clock)
    startup_allowance_s: float | None = None
    export_allowance_s: float | None = None
    inference_allowance_s: float | None = None  # CPU s on one core per 10,000 images
    cpu_cores: int | None = None
    usable_cores: int | None = None  # the cores this process (and so the sandbox) may run on
    memory_cap_gib: float | None = None  # per candidate
    slots: int = 1
    device_name: str | None = None  # a GPU's name
    device_memory_gib: float | None = None


@dataclass
class ProposalContext:
    iteration: int
    incumbent_code: str
    strategy: str  # the Strategy section of the experiment's program.md (what a revision rewrites)
    program: str = ""  # the whole program.md of the experiment (goal, rules, strategy): what the model reads
    incumbent: IterationRecord | None = None  # the incumbent's record: its runs, mean and spread
    rule: RuleConfig = field(default_factory=RuleConfig)  # the experiment's acceptance rule
    bar: Bar | None = None  # what a candidate must beat now: the incumbent's current runs, the rule's margins
    history: list[IterationRecord] = field(default_factory=list)  # finished iterations, oldest first
    hardware: Hardware = field(default_factory=lambda: Hardware("cpu", 120.0))
    seed: int = 0
    max_cost_left: float | None = None  # USD the proposer may still spend (None: no cap)
    in_flight: list[InFlight] = field(default_factory=list)  # candidates being measured now, in other slots
    experiment: str = ""  # the experiment's name
    store_url: str = ""  # the experiment's store: where a proposer with a memory of its own (optuna) keeps it


class Proposer(Protocol):
    name: str

    def propose(self, ctx: ProposalContext) -> Proposal | None:
        """The next candidate, or None when this proposer has nothing more to try."""

    def fix(self, ctx: ProposalContext, candidate: Proposal, error: str, log_tail: str) -> Proposal:
        """A corrected candidate after a pre-flight crash; a Proposal with error set when it cannot fix it."""

    def revise_strategy(self, ctx: ProposalContext) -> Revision:
        """A new Strategy section and the lessons learned, from the history so far."""


class Settles(Protocol):
    """A proposer that is told each finished iteration's outcome (optuna's `tell`), beyond what the history shows."""

    def settle(self, ctx: ProposalContext) -> int:
        """Take in every finished iteration of ctx.history not taken in yet (idempotent); returns how many."""


class CannotFix:
    """For proposers without a model to ask: a crashed candidate stays crashed, the iteration is recorded as
    failed, and the loop goes on."""

    name = ""

    def fix(self, ctx: ProposalContext, candidate: Proposal, error: str, log_tail: str) -> Proposal:
        return Proposal(
            hypothesis=candidate.hypothesis,
            change_type=candidate.change_type,
            code=candidate.code,
            error=f"the {self.name} proposer cannot fix a candidate that crashed: {error}",
        )
