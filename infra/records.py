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
from datetime import datetime
from enum import StrEnum
from typing import Any

from infra.sandbox.compute_record import ComputeRecord


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
    compute: ComputeRecord | None = None  # the compute it received; None: it never reached training
    slot: int = 0  # the measurement slot that made it (infra/sandbox/slots.py)
    started_at: datetime | None = None  # naive UTC; None for runs stored before slots
    made_at: datetime | None = None  # naive UTC: when it was stored, right after it ended
    worker: str = ""  # the pool worker that made it (infra/pool/); '' for the coordinator's own slots

    @property
    def score(self) -> float | None:
        """Its validation accuracy when it counts for a decision (ok, not measured again); else None."""
        return self.val_accuracy if self.status == Status.OK and not self.remeasured else None

    def as_dict(self) -> dict[str, Any]:
        """As the history, the prompt and `history --json` show one run: its numbers and its compute."""
        per_second = self.epochs / self.train_seconds if self.epochs and self.train_seconds else None
        return {
            "seq": self.seq,
            "seed": self.seed,
            "status": str(self.status),
            "val_accuracy": self.val_accuracy,
            "epochs": self.epochs,
            "train_seconds": self.train_seconds,
            "epochs_per_second": per_second,
            "inference_seconds": self.inference_seconds,
            **(self.compute.as_dict() if self.compute else {}),
        }

    @classmethod
    def from_row(cls, row: Any) -> MeasuredRun:
        values = {f.name: getattr(row, f.name) for f in dataclasses.fields(cls)}
        return cls(**{**values, "status": Status(row.status), "compute": ComputeRecord.from_stored(row.compute)})


@dataclass(frozen=True)
class PoolLease:
    """A job a pool's worker claimed (infra/pool/): who, since when, its last beat, and its answer once made
    (the raw bytes, untrusted until infra/pool/protocol.py accepts them)."""

    job_id: str
    worker: str
    started_at: datetime
    beat_at: datetime
    answer: bytes | None  # None: none yet, or one too long to read (answer_bytes says)
    answer_bytes: int | None = None


@dataclass(frozen=True)
class RunUsed:
    """A run a decision rested on, as the decision stores it."""

    seq: int
    seed: int
    score: float | None


@dataclass(frozen=True)
class DecisionRecord:
    """How an iteration was decided, as stored with it (iterations.decision, JSON): the acceptance rule's numbers at
    its last look (infra/research/acceptance_rule.py Decision), why it stopped, its one-line summary, the runs it
    rested on, the incumbent it was compared with and the one it was proposed on. Empty for the baseline and for an
    iteration never compared; a decision of the rule before the sequential one holds its delta and threshold only."""

    summary: str = ""
    verdict: str = ""
    stop: str = ""
    delta: float | None = None  # mean(candidate) - mean(incumbent), accuracy
    sigma: float | None = None
    dof: float | None = None
    sure: float | None = None  # how sure the rule was that the candidate is better
    needed: float | None = None  # how sure a keep had to be
    threshold: float | None = None  # the delta a keep needed at the last look
    incumbent_mean: float | None = None
    candidate_mean: float | None = None
    n_incumbent: int | None = None
    n_candidate: int | None = None
    floor_sigma: float | None = None
    note: str = ""
    candidate_runs: tuple[RunUsed, ...] = ()
    incumbent_runs: tuple[RunUsed, ...] = ()
    incumbent: int | None = None  # the iteration it was compared with
    proposed_on: int | None = None  # the incumbent when it was proposed
    rebased: str = ""  # how it was re-based (compared with an incumbent kept while it was in flight), if it was

    def line(self) -> str:
        """The decision in one line (acceptance_rule.summary's form), with how it was re-based; the earlier rule's
        delta and threshold; '' when nothing was compared."""
        if self.summary:
            return self.summary + (f"; {self.rebased}" if self.rebased else "")
        if self.threshold is not None and self.delta is not None:
            return f"{self.delta * 100:+.2f} points, threshold {self.threshold * 100:.2f} (the earlier rule)"
        return ""

    def as_stored(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_stored(cls, stored: dict[str, Any] | None) -> DecisionRecord:
        """Back from the store's JSON. A decision stored by an older version may lack later fields (their defaults)
        or hold ones since dropped (ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in (stored or {}).items() if key in known}
        for key in ("candidate_runs", "incumbent_runs"):
            values[key] = tuple(RunUsed(r["seq"], r["seed"], r.get("score")) for r in values.get(key) or ())
        return cls(**values)


@dataclass
class IterationRecord:
    iteration: int
    status: Status = Status.RUNNING
    verdict: Verdict = Verdict.PENDING
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
    decision: DecisionRecord = field(default_factory=DecisionRecord)  # how it was decided: the rule's numbers
    attempts: list[dict[str, Any]] = field(
        default_factory=list
    )  # pre-flight runs and fixes: attempt, note, status, ...
    runs: list[MeasuredRun] = field(default_factory=list)  # its code's runs for its decision, as made (the store's)
    memory: dict[str, Any] = field(default_factory=dict)  # what the proposer asked to remember of this move
    orchestrator_crashes: int = 0  # how often the orchestrator died while this iteration ran
    code: str = ""  # the candidate's whole train.py
    diff: str = ""  # against the incumbent it was proposed on
    finished: bool = False
    started_at: datetime | None = None  # naive UTC, as the store keeps times
    finished_at: datetime | None = None  # when it was decided: with several slots, iterations end out of order
    cost_usd: float = 0.0  # the proposer's calls for this iteration
    log_tail: str = ""  # failed iterations: the end of their training log, for the proposer to learn from

    @property
    def kept(self) -> bool:
        return self.verdict.kept

    @property
    def seconds_per_epoch(self) -> float | None:
        return seconds_per_epoch(self.train_seconds, self.epochs)

    @classmethod
    def from_row(cls, row: Any, cost_usd: float = 0.0, runs: list[MeasuredRun] | None = None) -> IterationRecord:
        """From a store row (infra/store/store.py's Iteration), column by column, with its measured runs."""
        values = {
            f.name: getattr(row, f.name)
            for f in dataclasses.fields(cls)
            if f.name not in ("iteration", "finished", "cost_usd", "log_tail", "runs")
        }
        return cls(
            **{
                **values,
                "iteration": row.index,
                "finished": row.finished_at is not None,
                "cost_usd": cost_usd,
                "status": Status(row.status),
                "verdict": Verdict(row.verdict),
                "change_type": ChangeType(row.change_type),
                "memory": row.memory or {},
                "expected_effect": row.expected_effect or "",
                "attempts": row.attempts or [],
                "runs": runs or [],
                "decision": DecisionRecord.from_stored(row.decision),
                "measurements": row.measurements or [],
            }
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly (`history --json`, artifacts): the enums as their strings, times in ISO, each run as
        MeasuredRun shows it, the decision as it is stored; without the code and the diff (git and `autoresearch
        report` show those)."""
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("code", "diff")}
        return {
            key: (
                str(value)
                if isinstance(value, StrEnum)
                else value.isoformat()
                if isinstance(value, datetime)
                else value
            )
            for key, value in shown.items()
        } | {"runs": [run.as_dict() for run in self.runs], "decision": self.decision.as_stored()}


def seconds_per_epoch(train_seconds: float | None, epochs: int | None) -> float | None:
    """Training seconds per completed epoch, or None when there is nothing to divide."""
    return train_seconds / epochs if train_seconds and epochs else None


def kept_in_order(records: list[IterationRecord]) -> list[IterationRecord]:
    """The iterations that became the incumbent, in the order they did: by when each was decided, not by number (with
    several slots a candidate can be kept after a later-numbered one)."""
    kept = [r for r in records if r.finished and r.kept]
    return sorted(kept, key=lambda r: (r.finished_at or datetime.min, r.iteration))


def incumbent_of(records: list[IterationRecord]) -> IterationRecord | None:
    """The best so far: the iteration kept last (the baseline until a change is)."""
    kept = kept_in_order(records)
    return kept[-1] if kept else None
