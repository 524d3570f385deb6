"""
One iteration, as everything downstream of the store reads it: its status, the verdict on it,
its change type, and the typed record that the history, the prompt, the report and the CLI share.

The store's table (infra/store/store.py) is the schema; IterationRecord is its one read view,
filled from a row by column name, so a new column needs a field here and nowhere else.
The enums are StrEnums: their values are the strings in the database, so old rows read as they are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """How a candidate's run ended (infra/sandbox/trial.py says what each means)."""

    RUNNING = "running"  # recorded before training; replaced when the iteration is decided
    OK = "ok"
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    INVALID = "invalid"


class Verdict(StrEnum):
    """What was decided about an iteration (infra/research/acceptance_rule.py)."""

    PENDING = ""  # not decided yet: the iteration is still running
    BASELINE = "baseline"
    KEEP = "keep"
    DISCARD = "discard"
    CONFIRM = "confirm"  # undecided: the sequential rule asks for another run (never stored)

    @property
    def kept(self) -> bool:
        """The iteration's code became the incumbent."""
        return self in (Verdict.BASELINE, Verdict.KEEP)


class ChangeType(StrEnum):
    """What a candidate changed, measured on the code (infra/research/code_edit.py), not taken from its label."""

    UNKNOWN = ""  # a proposal that never became code
    BASELINE = "baseline"
    PARAMETRIC = "parametric"  # only UPPER_CASE constants
    STRUCTURAL = "structural"
    NONE = "none"  # the same program


@dataclass
class IterationRecord:
    iteration: int
    status: Status = Status.RUNNING
    decision: Verdict = Verdict.PENDING
    val_accuracy: float | None = None  # the mean of its measured runs
    val_loss: float | None = None
    test_accuracy: float | None = None  # kept iterations only: the held-out test set, reported, never decided on
    measurements: list[float] = field(default_factory=list)  # validation accuracy of every ok measured run
    hypothesis: str = ""
    expected_effect: str = ""
    change_type: ChangeType = ChangeType.UNKNOWN
    proposer: str = ""
    reason: str = ""
    epochs: int | None = None  # the first measured run's, as the orchestrator measured it
    train_seconds: float | None = None
    wall_seconds: float | None = None
    propose_seconds: float | None = None
    rule: dict[str, Any] = field(default_factory=dict)  # the acceptance rule's numbers: delta, threshold, sigma, ...
    attempts: list[dict[str, Any]] = field(default_factory=list)  # pre-flight runs and fixes: attempt, note, status, ...
    runs: list[dict[str, Any]] = field(default_factory=list)  # every measured run: seed, status, epochs, its compute
    memory: dict[str, Any] = field(default_factory=dict)  # what the proposer asked to remember of this move
    orchestrator_crashes: int = 0  # how often the orchestrator died while this iteration ran
    finished: bool = False
    finished_at: str | None = None  # when it was decided (ISO, UTC): with several slots, iterations end out of order
    cost_usd: float = 0.0  # the proposer's calls for this iteration
    log_tail: str = ""  # failed iterations: the end of their training log, for the proposer to learn from

    @property
    def kept(self) -> bool:
        return self.decision.kept

    @property
    def seconds_per_epoch(self) -> float | None:
        return seconds_per_epoch(self.train_seconds, self.epochs)

    @classmethod
    def from_row(cls, row: Any, cost_usd: float = 0.0) -> IterationRecord:
        """From a store row (infra/store/store.py's Iteration), column by column."""
        values = {f.name: getattr(row, f.name) for f in dataclasses.fields(cls)
                  if f.name not in ("iteration", "finished", "finished_at", "cost_usd", "log_tail")}
        return cls(**{**values, "iteration": row.index, "finished": row.finished_at is not None, "cost_usd": cost_usd,
                      "finished_at": row.finished_at.isoformat() if row.finished_at else None,
                      "status": Status(row.status), "decision": Verdict(row.decision),
                      "change_type": ChangeType(row.change_type), "memory": row.memory or {},
                      "expected_effect": row.expected_effect or "", "attempts": row.attempts or [],
                      "runs": row.runs or [], "rule": row.rule or {}, "measurements": row.measurements or []})

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly (`history --json`, artifacts): the enums as their strings."""
        return {key: (str(value) if isinstance(value, StrEnum) else value)
                for key, value in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class MeasuredRun:
    """One measured run (train, then evaluate) as the store keeps it, the moment it finishes: the experiment numbers
    them (seq), so a decision interrupted between two runs resumes with the runs it has."""

    seq: int  # the experiment's run number, given by the store: the order (and the clock) of the night
    iteration: int  # whose code it measured: a candidate's iteration, or the incumbent's when measured again
    decided_in: int  # the iteration whose decision asked for it (== iteration for a candidate's or the baseline's)
    seed: int
    status: Status
    val_accuracy: float | None
    reason: str = ""  # how it ended: "ok", or why it failed
    val_loss: float | None = None
    epochs: int | None = None
    train_seconds: float | None = None
    wall_seconds: float | None = None
    inference_seconds: float | None = None
    contended: bool = False  # the machine's load starved it (infra/sandbox/compute_record.py)...
    remeasured: bool = False  # ...and it was measured again with the same seed: never compared
    compute: dict[str, Any] = field(default_factory=dict)  # the compute it received (infra/sandbox/compute_record.py)
    slot: int = 0  # the measurement slot that made it (infra/sandbox/slots.py)
    started_at: Any = None  # datetime, naive UTC; None for runs stored before slots
    made_at: Any = None  # datetime, naive UTC: when it was stored, right after it ended

    @property
    def score(self) -> float | None:
        """Its validation accuracy when it counts for a decision (ok, not measured again); else None."""
        return self.val_accuracy if self.status == Status.OK and not self.remeasured else None

    def as_dict(self) -> dict[str, Any]:
        """As the history, the prompt and `history --json` show one run: its numbers and its compute."""
        per_second = self.epochs / self.train_seconds if self.epochs and self.train_seconds else None
        return {"seq": self.seq, "seed": self.seed, "status": str(self.status), "val_accuracy": self.val_accuracy,
                "epochs": self.epochs, "train_seconds": self.train_seconds, "epochs_per_second": per_second,
                "inference_seconds": self.inference_seconds, **self.compute}

    @classmethod
    def from_row(cls, row: Any) -> MeasuredRun:
        values = {f.name: getattr(row, f.name) for f in dataclasses.fields(cls)}
        return cls(**{**values, "status": Status(row.status), "compute": row.compute or {}})


def seconds_per_epoch(train_seconds: float | None, epochs: int | None) -> float | None:
    """Training seconds per completed epoch, or None when there is nothing to divide."""
    return train_seconds / epochs if train_seconds and epochs else None


def incumbent_of(records: list[IterationRecord]) -> IterationRecord | None:
    """The best so far: the iteration kept last (the baseline until a change is). Last by when it was decided, not
    by number: with several slots a candidate can be kept after a later-numbered one (flows/research.py)."""
    kept = [r for r in records if r.finished and r.kept]
    return max(kept, key=lambda r: (r.finished_at or "", r.iteration)) if kept else None
