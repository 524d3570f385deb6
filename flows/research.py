"""
The research flow: baseline, then propose -> train -> evaluate -> decide, every N finished candidates revise strategy.

Slots: the experiment's measurement slots (infra/sandbox/slots.py) each measure one run at a time; the loop keeps
every slot busy. A candidate is proposed when a slot is free and no decision under way needs it; each decision asks
for one run at a time (tasks/measure.py through flows/slot_pool.py) and is decided the moment its run arrives.
Several candidates are then in flight at once; the proposer is told which. A decision always compares with the
incumbent of the moment: a candidate kept while others are in flight becomes their reference from their next look
on (they are re-based; the decision records the incumbent it was compared with, and the one it was proposed on).

Resume: the store is the source of truth. A run (or a Prefect flow retry) adopts every unfinished iteration whose
decision has runs stored and goes on from them (runs in flight at the crash are made again); the workspace's git
history and train.py are brought into agreement with the store first.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import torch
from prefect import flow

import prepare
from flows.mixed_slots import MixedSlots
from flows.pool_slots import PoolSlots
from flows.slot_pool import SlotPool
from infra import display, operator_files, session, settings
from infra.experiment_config import (
    CHANGEABLE_SETTINGS,
    ExperimentConfig,
    fixed_setting_changes,
)
from infra.failpoints import failpoint
from infra.proposers import InFlight, Proposal, ProposalContext, Revision, StopResearch, settles
from infra.proposers.base import Hardware
from infra.records import (
    ChangeType,
    DecisionRecord,
    IterationRecord,
    MeasuredRun,
    Status,
    Verdict,
    incumbent_of,
    kept_in_order,
)
from infra.research.acceptance_rule import Bar, Decision, Role, bar, summary
from infra.research.code_edit import unified_diff
from infra.research.evidence import Evidence, decision_record, evidence
from infra.research.lock import database_lock, experiment_lock
from infra.research.program import (
    parse_program,
    read_program,
    strategy_of,
    with_strategy,
)
from infra.research.workspace import Workspace
from infra.sandbox.allowances import measure_allowances
from infra.sandbox.slots import Slot, SlotError, default_slot_count, plan_slots
from infra.sandbox.trial import log_tail
from infra.store import Store, utcnow
from tasks.decide import keep_or_discard
from tasks.evaluate import test_report
from tasks.measure import Bench, Job, new_seed
from tasks.preflight import preflight
from tasks.propose import fix_candidate, propose_edit, settle_outcomes
from tasks.report import Report, publish_artifacts, publish_strategy_diff
from tasks.revise_strategy import revise_strategy


class ConfigMismatch(ValueError):
    """A resumed experiment was asked to run under different fixed settings."""


CHANGE_FLAG = "--change-rule"  # the CLI option that lets a resumed run change a changeable fixed setting
POOL_DEFAULT_SLOTS = 2  # runs in flight on a pool when --slots is not given
Measuring = SlotPool | PoolSlots | MixedSlots  # where runs are measured: one contract (flows/slot_pool.py)


class Loop:
    """One flow run's view of an experiment: the store, the workspace and the fixed data."""

    def __init__(self, cfg: ExperimentConfig, change_rule: bool = False):
        self.cfg = cfg
        self.rule = cfg.rule_config()
        operator_files.operator_dir(Path(cfg.home))  # the runs home is the operator's alone (0700), or refused
        self.store = Store(cfg.db_url, upgrade=True)  # the coordinator migrates the store, once per run
        self.ws = Workspace(operator_files.operator_dir(Path(cfg.home) / cfg.name))  # before anything is made in it
        self.val = prepare.load_split_uint8("val")
        self.test = prepare.load_split_uint8("test")
        self.baseline_code = Path(cfg.baseline_path).read_text()
        self.exp = self.store.ensure_experiment(cfg.name, cfg.model_dump())
        self._resolve_cpu_threads()
        self.slots = self._resolve_slots()
        self._resolve_allowances()
        self.changes = self._check_same_settings(change_rule)
        self.limits = cfg.limits()
        self.bench = Bench(self.store, self.exp.id, self.ws.run_dir, self.limits, self.val, cfg.device)
        self.preflight = cfg.preflight if cfg.preflight is not None else cfg.language_model
        self.target = cfg.iterations  # the last iteration this run works towards (see target_of)

    def _resolve_cpu_threads(self) -> None:
        """The experiment's stored allotted cores, or the default: the same CPU budget for every candidate."""
        if self.cfg.cpu_threads is None:
            self.cfg.cpu_threads = self.exp.config.get("cpu_threads") or settings.default_cpu_threads()

    def _resolve_slots(self) -> list[Slot]:
        """The experiment's stored slots and memory cap, or the defaults (infra/sandbox/slots.py): one slot per GPU
        where runs go to GPUs, else as many CPU slots as leave the orchestrator a core; the memory cap is half the
        machine's memory shared among them. An experiment stored before slots ran in one."""
        cfg, stored = self.cfg, self.exp.config
        if cfg.pool is None:
            cfg.pool = stored.get("pool")
        if cfg.pool:
            return self._resolve_pool_slots()
        if cfg.local_slots:
            raise SlotError(f"--local-slots {cfg.local_slots}: goes with --pool (without one, --slots are here)")
        gpus = cfg.devices or self._visible_gpus()
        if cfg.slots is None:
            cfg.slots = stored.get("slots") or (
                1 if self.store.records(self.exp.id) else default_slot_count(cfg.cpu_threads, len(gpus))
            )
        if gpus and not cfg.devices:
            gpus = gpus[: cfg.slots]
        cfg.devices = gpus or None
        if cfg.memory_cap_bytes is None:
            cfg.memory_cap_bytes = stored.get("memory_cap_bytes") or settings.default_memory_cap_bytes() // cfg.slots
        slots = plan_slots(cfg.slots, cfg.cpu_threads, cfg.devices)
        print(
            f"slots: {len(slots)} ({'; '.join(s.describe() for s in slots)}), memory cap "
            f"{cfg.memory_cap_bytes / 2**30:.1f} GiB each"
        )
        return slots

    def _resolve_pool_slots(self) -> list[Slot]:
        """With a pool, cfg.slots is how many runs are in flight on its workers (flows/pool_slots.py) and
        cfg.local_slots how many on this machine's own slots besides (flows/mixed_slots.py). With none here, this
        machine keeps one slot for what the coordinator runs itself: the allowances' measurement."""
        cfg, stored = self.cfg, self.exp.config
        if cfg.slots is None:
            cfg.slots = stored.get("slots") or POOL_DEFAULT_SLOTS
        if cfg.local_slots is None:
            cfg.local_slots = stored.get("local_slots") or 0
        here = cfg.local_slots
        if cfg.memory_cap_bytes is None:
            cfg.memory_cap_bytes = stored.get("memory_cap_bytes") or settings.default_memory_cap_bytes() // (
                here or cfg.slots
            )
        if here and not cfg.devices:
            cfg.devices = self._visible_gpus()[:here] or None
        if here and cfg.devices:  # GPU slots here: the pool's jobs go to GPUs too, so every run has one device
            if cfg.device == "cpu":
                raise SlotError(f"--devices {','.join(cfg.devices)} with --device cpu: runs would differ in device")
            cfg.device = cfg.device or "cuda"
        slots = plan_slots(here or 1, cfg.cpu_threads, cfg.devices if here else None)
        where = (
            f"and {here} here ({'; '.join(s.describe() for s in slots)})"
            if here
            else f"here: {slots[0].describe()} (allowances)"
        )
        print(
            f"slots: {cfg.slots} in flight on pool {cfg.pool} {where}, memory cap "
            f"{cfg.memory_cap_bytes / 2**30:.1f} GiB each"
        )
        return slots

    def _visible_gpus(self) -> list[str]:
        """The GPUs runs would use without --devices: the one --device names, or every visible one when the device
        is a GPU or (no --device) CUDA is available; none on a CPU."""
        device = self.cfg.device
        if device and device.startswith("cuda:"):
            return [device]
        if device in (None, "cuda") and torch.cuda.is_available():
            return [f"cuda:{k}" for k in range(torch.cuda.device_count())]
        return []

    def _resolve_allowances(self) -> None:
        """The experiment's stored start-up and export allowances, or (first run) both measured now in one reference
        run (infra/sandbox/allowances.py): the same for every candidate. An experiment stored before the export
        allowance keeps its fixed grace as its export allowance, so its candidates stay equal."""
        stored = self.exp.config
        if self.cfg.startup_allowance_s is None:
            self.cfg.startup_allowance_s = stored.get("startup_allowance_s")
        if self.cfg.export_allowance_s is None:
            self.cfg.export_allowance_s = stored.get("export_allowance_s", stored.get("grace_s"))
        if self.cfg.startup_allowance_s is not None and self.cfg.export_allowance_s is not None:
            print(
                f"allowances: start-up {self.cfg.startup_allowance_s:g} s, export {self.cfg.export_allowance_s:g} s, "
                f"inference {self.cfg.inference_allowance_s:g} CPU s per 10,000 images"
            )
            return
        measured = measure_allowances(
            self.ws.root / "iterations" / "allowance-probe",
            self.cfg.device,
            cpu_threads=self.cfg.cpu_threads,
            slot=self.slots[0],
        )
        if self.cfg.startup_allowance_s is None:
            self.cfg.startup_allowance_s = measured.startup_s
        if self.cfg.export_allowance_s is None:
            self.cfg.export_allowance_s = measured.export_s
        print(
            f"allowances measured in the sandbox: start-up {self.cfg.startup_allowance_s:g} s, export "
            f"{self.cfg.export_allowance_s:g} s ({measured.clock} clock; the reference took "
            f"{measured.measured_startup_s:g} and {measured.measured_export_s:g} s); inference "
            f"{self.cfg.inference_allowance_s:g} CPU s per 10,000 images"
        )

    def _check_same_settings(self, change_rule: bool) -> list[tuple[str, Any, Any]]:
        """The changes of changeable settings this run makes (allowed by change_rule); any other change refused."""
        changes = fixed_setting_changes(self.exp.config, self.cfg)
        for key, before, now in changes:
            if key not in CHANGEABLE_SETTINGS:
                raise ConfigMismatch(
                    f"experiment {self.cfg.name!r} runs with {key}={before}; resume with the same "
                    f"value (asked for {now}), or start a new experiment, so every candidate gets "
                    f"equal compute"
                )
            if not change_rule:
                raise ConfigMismatch(
                    f"experiment {self.cfg.name!r} runs with {key}={before!r} (asked for {now!r}): "
                    f"later candidates would be decided by other standards than earlier ones. Start a "
                    f"new experiment, or change it on purpose with {CHANGE_FLAG} (recorded in its "
                    f"history and research log)"
                )
        return changes

    def record_changes(self) -> None:
        """Store and commit the changes of changeable settings this run was allowed to make (--change-rule)."""
        after = self.finished()[-1].iteration if self.finished() else 0
        for key, before, now in self.changes:
            self.store.add_setting_change(self.exp.id, key, before, now, after)
            self.ws.commit_note(
                f"Setting change: {key} after iteration {after}",
                f"{key}: {before!r} -> {now!r} ({CHANGE_FLAG}); later iterations are decided under it.",
            )
            print(f"setting change after iteration {after}: {key} {before!r} -> {now!r} ({CHANGE_FLAG})")

    # --- state derived from the store ----------------------------------------

    def finished(self) -> list[IterationRecord]:
        return self.store.records(self.exp.id, finished_only=True)

    def incumbent(self) -> IterationRecord:
        """The iteration kept last (infra/records.py incumbent_of); the baseline is recorded before anything asks."""
        incumbent = incumbent_of(self.finished())
        assert incumbent is not None, "no baseline recorded yet"
        return incumbent

    def unfinished(self) -> list[IterationRecord]:
        return [r for r in self.store.records(self.exp.id) if not r.finished]

    def history(self) -> list[IterationRecord]:
        """Finished iterations; failed ones carry the tail of their log, for the proposer to learn from."""
        records = self.store.records(self.exp.id, finished_only=True)
        for record in records:
            if record.status != Status.OK and record.runs:  # its first measured run's log
                run_dir = self.ws.run_dir(record.iteration, record.runs[0].seed)
                record.log_tail = log_tail(run_dir / "train.log", 8)
        return records

    def cost_left(self) -> float | None:
        return None if self.cfg.max_cost is None else self.cfg.max_cost - self.store.total_cost(self.exp.id)

    def strategy(self) -> str:
        versions = self.store.strategies(self.exp.id)
        return versions[-1].text if versions else ""

    @staticmethod
    @functools.cache
    def device_facts(device: str | None) -> tuple[str, str | None, float | None]:
        """The training device as the proposer is told it (its name, a GPU's name and memory); asked once per process
        (CUDA queries are not free). device: the experiment's --device (None: what prepare.get_device() picks, as in
        the sandbox)."""
        resolved = torch.device(device) if device else prepare.get_device()
        if resolved.type == "cuda":
            props = torch.cuda.get_device_properties(resolved)
            return str(resolved), torch.cuda.get_device_name(resolved), round(props.total_memory / 2**30, 1)
        return resolved.type, None, None

    def context(self, iteration: int, in_flight: list[InFlight] | None = None) -> ProposalContext:
        """What the proposer sees: the whole program.md, the incumbent's record, the rule, the history, the hardware,
        and the candidates being measured now in other slots."""
        inc = self.incumbent()
        history = self.history()
        device, device_name, device_memory_gib = self.device_facts(self.cfg.device)
        hardware = Hardware(
            device=device,
            budget_s=self.cfg.budget_s,
            cpu_threads=self.limits.cpu_threads if device == "cpu" else None,
            startup_allowance_s=self.limits.startup_allowance_s,
            export_allowance_s=self.limits.export_allowance_s,
            inference_allowance_s=self.limits.inference_allowance_s,
            cpu_cores=os.cpu_count(),
            usable_cores=len(os.sched_getaffinity(0)),
            memory_cap_gib=round(self.limits.memory_cap_bytes / 2**30, 1),
            slots=self.cfg.slots + (self.cfg.local_slots or 0) if self.cfg.pool else len(self.slots),
            device_name=device_name,
            device_memory_gib=device_memory_gib,
        )
        return ProposalContext(
            iteration=iteration,
            incumbent_code=inc.code,
            strategy=self.strategy(),
            program=self.program(),
            incumbent=incumbent_of(history),
            rule=self.rule,
            bar=self.bar(),
            history=history,
            hardware=hardware,
            seed=self.exp.id,
            max_cost_left=self.cost_left(),
            in_flight=in_flight or [],
            experiment=self.cfg.name,
            store_url=self.store.url,
        )

    def evidence(self, iteration: int, incumbent: int) -> Evidence:
        """The evidence for iteration's decision against the incumbent iteration, from the runs stored now
        (infra/research/evidence.py); a decision with no run yet starts at the next run's number, now."""
        runs = self.store.measured_runs(self.exp.id)
        return evidence(runs, iteration, incumbent, self.rule, ((runs[-1].seq if runs else 0) + 1, utcnow()))

    def bar(self) -> Bar | None:
        """What a candidate must beat now: the incumbent's current runs under the experiment's floor."""
        found = self.evidence(-1, self.incumbent().iteration)  # no iteration -1: the incumbent's runs as of now
        return bar(found.scores(Role.INCUMBENT), found.floor, self.rule)

    # --- make the workspace agree with the store ------------------------------

    def program(self) -> str:
        """The experiment's own program.md (infra/research/program.py), read as a file of the operator's."""
        return parse_program(self.ws.read_program_md(), self.ws.program_md)

    def sync(self) -> None:
        program = read_program(Path(self.cfg.program_path))
        self.ws.ensure(self.baseline_code, program)
        if not self.store.strategies(self.exp.id):
            self.store.add_strategy(self.exp.id, 0, 0, strategy_of(self.program()), "initial strategy")
        current = self.program()
        finished = self.finished()
        versions = self.store.strategies(self.exp.id)
        if strategy_of(current) != strategy_of(with_strategy(current, versions[-1].text)):
            self.ws.write_program_md(with_strategy(current, versions[-1].text))
            self.ws.commit_program(versions[-1].version, finished[-1].iteration if finished else 0)
        committed = set(self.ws.committed_iterations())
        previous = None
        for record in kept_in_order(finished):  # each keep's commit, against the incumbent it replaced
            if record.verdict == Verdict.KEEP and record.iteration not in committed:
                self.ws.commit_keep(
                    record.iteration, record.hypothesis, previous.val_accuracy, record.val_accuracy, record.code
                )
            previous = record
        if previous is not None and self.ws.read_train_py() != previous.code:
            self.ws.write_train_py(previous.code)


# --- measured runs and the baseline -------------------------------------------

# what an iteration records of its first measured run (named: a field both records have, such as the iteration's
# number or its start time, is not the run's to give; the store refuses a name that is not a column)
RUN_FIELDS = ("status", "reason", "val_accuracy", "val_loss", "epochs", "train_seconds", "wall_seconds")


def run_fields(first: MeasuredRun) -> dict[str, Any]:
    """An iteration's status, reason, epochs, ...: those of its first measured run."""
    return {name: getattr(first, name) for name in RUN_FIELDS}


def run_baseline(loop: Loop, slots: Measuring) -> None:
    """Iteration 0: the baseline's `repeats` runs, measured side by side on the slots."""
    code = loop.ws.read_train_py()
    done = [r for r in loop.store.measured_runs(loop.exp.id, decided_in=0) if not r.remeasured]  # a resumed baseline
    measured = list(done)
    wanted = loop.cfg.repeats - len(done)
    while len(measured) < loop.cfg.repeats:
        while wanted and slots.idle:
            slots.submit(Job(code, 0, 0, new_seed()))
            wanted -= 1
        measured.append(slots.next_result()[1])
    measured.sort(key=lambda m: m.seq)
    scores = [m.score for m in measured if m.score is not None]
    if not scores:
        raise RuntimeError(f"the baseline failed every run: {measured[0].status}: {measured[0].reason}")
    first_ok = next(m for m in measured if m.score is not None)
    test_acc = test_report(loop.ws.run_dir(0, first_ok.seed), loop.test, loop.limits, 0)
    loop.store.put_iteration(
        loop.exp.id,
        0,
        proposer="baseline",
        hypothesis="baseline",
        change_type=ChangeType.BASELINE,
        code=code,
        diff="",
        **{**run_fields(first_ok), "val_accuracy": statistics.fmean(scores)},
        measurements=scores,
        verdict=Verdict.BASELINE,
        decision={},
        test_accuracy=test_acc,
        finished_at=utcnow(),
    )
    print(f"iteration 0 (baseline): val_accuracy {statistics.fmean(scores):.4f} over {len(scores)} runs {scores}")


def record_calls(loop: Loop, i: int, calls: list[dict[str, Any]]) -> None:
    for call in calls:
        loop.store.add_proposer_call(loop.exp.id, i, **call)


def pass_preflight(
    loop: Loop, i: int, ctx: ProposalContext, proposal: Proposal
) -> tuple[Proposal, list[dict[str, Any]]]:
    """Smoke-run the candidate; on a crash send the traceback back for a fix, up to fix_attempts times.
    The iteration keeps the original hypothesis and expected effect; each attempt records what was tried and how it
    ended."""
    attempts: list[dict[str, Any]] = []
    note = proposal.hypothesis
    for attempt in range(loop.cfg.fix_attempts + 1):
        smoke = preflight(
            proposal.code, loop.ws.iteration_dir(i) / f"preflight-{attempt}", loop.limits, i, attempt, loop.cfg.device
        )
        tail = log_tail(smoke.log_path)
        attempts.append(
            {"attempt": attempt, "note": note, "status": smoke.status, "reason": smoke.reason, "log_tail": tail}
        )
        if smoke.status == Status.OK:
            return proposal, attempts
        if attempt == loop.cfg.fix_attempts:
            return replace(proposal, error=f"pre-flight failed after {attempt} fix attempts: {smoke.reason}"), attempts
        try:
            fixed = fix_candidate(loop.cfg.proposer, loop.cfg.model, ctx, proposal, smoke.reason, tail, attempt + 1)
        except StopResearch:
            raise
        except Exception as exc:  # whatever a proposer raises is recorded on the iteration, never fails the flow
            return replace(proposal, error=f"fix attempt {attempt + 1}: {proposer_failure(exc)}"), attempts
        record_calls(loop, i, fixed.calls)
        if fixed.error:
            return replace(proposal, error=f"fix attempt {attempt + 1}: {fixed.error}"), attempts
        note = fixed.hypothesis
        proposal = replace(fixed, hypothesis=proposal.hypothesis, expected_effect=proposal.expected_effect)
    return proposal, attempts


def proposer_failure(exc: Exception) -> str:
    """An exception a proposer raised, as one bounded, cleaned line for the iteration's reason."""
    return f"the proposer failed: {type(exc).__name__}: {display.one_line(str(exc))[:500]}"


@dataclass
class Candidate:
    """A candidate whose decision is under way: its iteration, its proposal, the incumbent it was proposed on."""

    iteration: int
    proposal: Proposal
    base: dict[str, Any]  # the iteration's record fields from its proposal
    proposed_on: int  # the incumbent's iteration when it was proposed (its code is an edit of that one)
    looked: int = 0  # its runs at its last look: a look is taken once per candidate run
    measuring: list[Role] = field(default_factory=list)  # whose runs are being measured for it now (one each at most)
    arrived: bool = True  # a run of its arrived since its last look (or it is new): a look is due
    incumbent_failures: int = 0  # runs of the incumbent, measured for this decision, that failed
    rebased: str = ""  # how it was re-based (compared with an incumbent kept while it was in flight), if it was

    def in_flight(self) -> InFlight:
        return InFlight(self.iteration, self.proposal.hypothesis, self.proposal.change_type, self.proposal.code)


def adopted(loop: Loop, row: IterationRecord) -> Candidate:
    """An unfinished iteration's candidate, from its stored proposal: its decision goes on from the runs stored
    (runs that were in flight when the orchestrator died are made again)."""
    proposal = Proposal(
        hypothesis=row.hypothesis,
        change_type=row.change_type,
        code=row.code,
        expected_effect=row.expected_effect,
        memory=row.memory,
    )
    base = dict(
        proposer=row.proposer,
        hypothesis=row.hypothesis,
        change_type=row.change_type,
        expected_effect=row.expected_effect,
        memory=row.memory,
        code=row.code,
        diff=row.diff,
        propose_seconds=row.propose_seconds,
        attempts=row.attempts,
    )
    found = loop.evidence(row.iteration, loop.incumbent().iteration)
    k = len(found.candidate)
    if found.last is not None:
        print(
            f"iteration {row.iteration}: resuming its decision with {k} candidate and {len(found.incumbent)} current "
            f"incumbent runs already measured"
        )
    proposed_on = row.decision.proposed_on if row.decision.proposed_on is not None else loop.incumbent().iteration
    # a candidate's run made last: the look after it is due (again)
    return Candidate(row.iteration, proposal, base, proposed_on, looked=k - 1 if found.last == Role.CANDIDATE else k)


def propose(
    loop: Loop, i: int, incumbent: IterationRecord, in_flight: list[InFlight]
) -> tuple[Proposal | None, dict[str, Any]]:
    """A new proposal for iteration i, pre-flighted, and the iteration's record fields (None: nothing to propose)."""
    started = datetime.now(timezone.utc)
    ctx = loop.context(i, in_flight)
    try:
        proposal = propose_edit(loop.cfg.proposer, loop.cfg.model, ctx)
    except StopResearch:
        raise
    except Exception as exc:  # whatever a proposer raises is recorded on the iteration, never fails the flow
        proposal = Proposal(
            hypothesis="", change_type=ChangeType.UNKNOWN, code=incumbent.code, error=proposer_failure(exc)
        )
    if proposal is None:
        return None, {}
    record_calls(loop, i, proposal.calls)
    propose_seconds = (datetime.now(timezone.utc) - started).total_seconds()
    attempts: list[dict[str, Any]] = []
    if not proposal.error and loop.preflight:
        proposal, attempts = pass_preflight(loop, i, ctx, proposal)
    base = dict(
        proposer=loop.cfg.proposer.split(":")[0],
        hypothesis=proposal.hypothesis,
        change_type=proposal.change_type,
        expected_effect=proposal.expected_effect,
        memory=proposal.memory,
        code=proposal.code,
        diff=unified_diff(incumbent.code, proposal.code),
        propose_seconds=propose_seconds,
        attempts=attempts,
    )
    return proposal, base


def new_candidate(loop: Loop, in_flight: list[InFlight]) -> Candidate | None:
    """The next iteration's candidate, proposed against the incumbent of now and numbered by the store; a proposal
    that failed is recorded at once (never measured) and None returned, as when there is nothing to propose."""
    incumbent = loop.incumbent()
    i = max(r.iteration for r in loop.store.records(loop.exp.id)) + 1
    failpoint("propose", i)
    proposal, base = propose(loop, i, incumbent, in_flight)
    if proposal is None:
        raise NothingToPropose
    if proposal.error:  # never reaches training; recorded, and the loop goes on
        row = loop.store.add_iteration(
            loop.exp.id,
            **base,
            status=Status.INVALID,
            reason=proposal.error,
            verdict=Verdict.DISCARD,
            decision={},
            measurements=[],
            val_accuracy=None,
            started_at=utcnow(),
            finished_at=utcnow(),
        )
        print(f"iteration {row.index}/{loop.target}: failed proposal: {display.one_line(proposal.error)}")
        return None
    row = loop.store.add_iteration(
        loop.exp.id,
        **base,
        status=Status.RUNNING,
        verdict=Verdict.PENDING,
        decision=DecisionRecord(proposed_on=incumbent.iteration).as_stored(),
        measurements=[],
        started_at=utcnow(),
        finished_at=None,
    )
    return Candidate(row.index, proposal, base, incumbent.iteration)


class NothingToPropose(Exception):
    """The proposer has nothing more to try."""


def look(loop: Loop, cand: Candidate) -> tuple[Decision, Evidence, IterationRecord]:
    """The decision about cand after the runs stored now, against the incumbent of now (re-based if another
    candidate was kept while it was in flight), and the evidence and incumbent it rests on."""
    incumbent = loop.incumbent()
    rebased = (
        (
            f"re-based: compared with iteration {incumbent.iteration}, kept while it was in flight (it was proposed "
            f"on iteration {cand.proposed_on})"
        )
        if incumbent.iteration != cand.proposed_on
        else ""
    )
    if rebased != cand.rebased:
        cand.rebased = rebased
        print(f"iteration {cand.iteration}: {rebased}")
    found = loop.evidence(cand.iteration, incumbent.iteration)
    k = len(found.candidate)
    due = k > cand.looked  # at most one look per candidate run: the rule's guarantee counts looks by run
    decision = keep_or_discard(
        found, loop.rule, cand.iteration, due, incumbent_failing=cand.incumbent_failures >= MAX_INCUMBENT_FAILURES
    )
    if due and not math.isnan(decision.delta):  # a look was taken (not one put off for more incumbent runs)
        cand.looked = k
    return decision, found, incumbent


MAX_INCUMBENT_FAILURES = 2  # failed incumbent runs for one decision after which it compares with the runs there are


def next_job(cand: Candidate, role: Role, incumbent: IterationRecord) -> Job:
    """A run for cand's decision: the candidate's, or the incumbent's again, with a new seed."""
    if role == Role.CANDIDATE:
        return Job(cand.proposal.code, cand.iteration, cand.iteration, new_seed())
    return Job(incumbent.code, incumbent.iteration, cand.iteration, new_seed())


def finish(
    loop: Loop, cand: Candidate, decision: Decision, found: Evidence, incumbent: IterationRecord, busy: set[Path]
) -> None:
    """Record cand's decision: keep (its code becomes the incumbent, committed) or discard. busy: run directories
    being measured now, whose models are not pruned."""
    i = cand.iteration
    failpoint("decided", i)
    first = found.candidate[0]
    scores = found.scores(Role.CANDIDATE)
    verdict = Verdict.KEEP if decision.verdict == Verdict.KEEP else Verdict.DISCARD
    test_acc = (
        test_report(loop.ws.run_dir(i, first.seed), loop.test, loop.limits, i) if verdict == Verdict.KEEP else None
    )
    looked = not math.isnan(decision.delta)  # False: its first run failed, there was nothing to compare
    note = "; ".join(n for n in (decision.note, cand.rebased) if n)
    where = dict(incumbent=incumbent.iteration, proposed_on=cand.proposed_on, rebased=cand.rebased)
    record = decision_record(decision, found, **where) if looked else DecisionRecord(**where)
    loop.store.put_iteration(
        loop.exp.id,
        i,
        **cand.base,
        **{**run_fields(first), "val_accuracy": statistics.fmean(scores) if scores else None},
        measurements=scores,
        verdict=verdict,
        decision=record.as_stored(),
        test_accuracy=test_acc,
        finished_at=utcnow(),
    )
    failpoint("recorded", i)
    loop.ws.prune_models(i, keep=loop.ws.run_dir(i, first.seed) if verdict == Verdict.KEEP else None, busy=busy)
    if incumbent.runs:  # its runs measured again for this decision: only its own first model is kept
        loop.ws.prune_models(
            incumbent.iteration, keep=loop.ws.run_dir(incumbent.iteration, incumbent.runs[0].seed), busy=busy
        )
    if verdict == Verdict.KEEP:
        loop.ws.commit_keep(
            i, cand.proposal.hypothesis, incumbent.val_accuracy, statistics.fmean(scores), cand.proposal.code
        )
    what = summary(decision) if looked else first.reason
    if note:
        what += f"; {note}"
    print(
        f"iteration {i}/{loop.target}: {first.status} {verdict} ({display.one_line(what)}) | "
        f"{display.one_line(cand.proposal.hypothesis)}"
    )


def candidates_finished(loop: Loop) -> int:
    """Finished candidates (iterations after the baseline): what strategy revision counts."""
    return sum(1 for r in loop.finished() if r.iteration > 0)


def maybe_revise(loop: Loop, in_flight: list[InFlight]) -> None:
    """Revise the strategy once revise_every more candidates have finished since the last version."""
    after = candidates_finished(loop)
    if after <= 0 or after % loop.cfg.revise_every:
        return
    version = after // loop.cfg.revise_every
    if any(v.version == version for v in loop.store.strategies(loop.exp.id)):
        return
    previous = loop.strategy()
    try:
        revision = revise_strategy(loop.cfg.proposer, loop.cfg.model, loop.context(after + 1, in_flight), after)
    except StopResearch:
        raise
    except Exception as exc:  # the strategy stays as it is; the version records why
        revision = Revision(previous, f"strategy revision failed: {proposer_failure(exc)}; the strategy is unchanged")
    text, lessons = revision.strategy, revision.lessons
    record_calls(loop, after, revision.calls)
    loop.store.add_strategy(loop.exp.id, version, after, text, lessons)
    publish_strategy_diff(loop.cfg.name, version, previous, text, lessons)
    loop.ws.write_program_md(with_strategy(loop.program(), text))
    loop.ws.commit_program(version, after)
    print(f"strategy version {version} after {after} candidates: {display.one_line(lessons)[:500]}")


def publish(loop: Loop, i: int) -> None:
    """Iteration i has finished: the Prefect artifacts show it, and a proposer that keeps its own account of
    outcomes (optuna's study) is told."""
    report = Report(loop.cfg.name, loop.history(), loop.target, loop.strategy(), loop.baseline_code, loop.ws.root)
    publish_artifacts(report, i)
    if settles(loop.cfg.proposer):
        try:
            settle_outcomes(loop.cfg.proposer, loop.cfg.model, loop.context(i + 1))
        except Exception as exc:  # told again after the next iteration (settling is idempotent); never fails the flow
            print(f"iteration {i}: the proposer could not be told the outcome yet: {proposer_failure(exc)}")


# --- what a run does after a crash, and when it stops ----------------------------


def target_of(cfg: ExperimentConfig, last_finished: int) -> int:
    """The last iteration of this run: the experiment's total, or (scheduled runs) `iterations` more than the
    last one finished before the run's session began."""
    return last_finished + cfg.iterations if cfg.new_iterations else cfg.iterations


def guard_crashed_iteration(loop: Loop, i: int) -> bool:
    """Iteration i's row left `running` means the orchestrator died in it: count that. At the crash limit
    record it as failed and return True (skip it), so one poisonous candidate cannot crash-loop the night."""
    row = next((r for r in loop.unfinished() if r.iteration == i), None)
    if row is None:
        return False
    crashes = row.orchestrator_crashes + 1
    if crashes < loop.cfg.crash_limit:
        loop.store.put_iteration(loop.exp.id, i, orchestrator_crashes=crashes)
        print(
            f"iteration {i}: the orchestrator died in it ({crashes} of {loop.cfg.crash_limit} times); running it again"
        )
        return False
    reason = f"crashed the orchestrator {crashes} times"
    loop.store.put_iteration(
        loop.exp.id,
        i,
        orchestrator_crashes=crashes,
        status=Status.CRASHED,
        reason=reason,
        verdict=Verdict.DISCARD,
        decision={},
        measurements=[],
        val_accuracy=None,
        finished_at=utcnow(),
    )
    loop.ws.prune_models(i, keep=None)
    print(f"iteration {i}/{loop.target}: {Status.CRASHED} {Verdict.DISCARD}: {reason}; skipped")
    return True


def last_wall_seconds(loop: Loop) -> float:
    """How long the last finished iteration took: the estimate of the next one's time."""
    finished = loop.finished()
    if not finished or finished[-1].started_at is None:
        return 0.0
    return max(0.0, (finished[-1].finished_at - finished[-1].started_at).total_seconds())


def session_began() -> datetime:
    """Now, or for a deployment's run that resumes a crashed run, when that run's session began (infra/session.py)."""
    now = datetime.now(timezone.utc)
    try:
        began = session.session_started()
    except Exception as exc:  # the Prefect API could not say: the run still runs, its own limits counted from now
        print(f"could not read this deployment's earlier runs ({type(exc).__name__}: {exc}); limits count from now")
        return now
    if began is None:
        return now
    print(f"this run resumes a crashed run: --hours, --until and --iterations count from {began:%Y-%m-%d %H:%M:%S %Z}")
    return began


def deadline_of(cfg: ExperimentConfig, began: datetime, started: float) -> float | None:
    """The run's deadline on the monotonic clock, on which `started` is now: the earlier of stop_after_s after the
    session began and stop_at's next occurrence after it."""
    ends = [began + timedelta(seconds=cfg.stop_after_s)] if cfg.stop_after_s is not None else []
    if cfg.stop_at is not None:
        local = began.astimezone()
        hour, minute = map(int, cfg.stop_at.split(":"))
        at = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        ends.append(at if at > local else at + timedelta(days=1))
    return started + (min(ends) - datetime.now(timezone.utc)).total_seconds() if ends else None


def finished_before(loop: Loop, began: datetime) -> int:
    """The last iteration finished before the session began (its runs add `iterations` after it)."""
    before = began.astimezone(timezone.utc).replace(tzinfo=None)  # the store's times are naive UTC
    return max((r.iteration for r in loop.finished() if r.finished_at < before), default=0)


def out_of_time(loop: Loop, deadline: float | None, i: int) -> str | None:
    """Why iteration i should not start (it would likely run past the run's deadline), or None."""
    if deadline is None:
        return None
    left, needed = deadline - time.monotonic(), last_wall_seconds(loop)
    if needed < left:
        return None
    limits = [f"--hours {loop.cfg.stop_after_s / 3600:g}"] if loop.cfg.stop_after_s is not None else []
    limits += [f"--until {loop.cfg.stop_at}"] if loop.cfg.stop_at is not None else []
    return (
        f"stopping before iteration {i}: {max(left, 0):.0f} s left before the run's end ({', '.join(limits)}), "
        f"and the last iteration took {needed:.0f} s"
    )


def run_experiment(config: ExperimentConfig, change_rule: bool = False) -> dict[str, Any]:
    """Run (or resume) one experiment until `iterations` iterations have finished (the body of the research flows:
    `research` here, a CLI's run; flows/scheduled.py's, a deployment's)."""
    began = session_began()
    deadline = deadline_of(config, began, time.monotonic())
    cfg = config.model_copy()  # the run resolves the allowance and the cores in it; the caller's stays as given
    loop = Loop(cfg, change_rule)
    with experiment_lock(loop.ws.root), database_lock(loop.store.url, cfg.name):
        loop.sync()
        loop.record_changes()
        loop.store.set_experiment(loop.exp.id, status="running", config=cfg.model_dump())
        try:
            best = research_loop(loop, began, deadline)
        except BaseException:  # an exception, Ctrl-C: the store says so (a SIGKILL leaves `running`, as it must)
            loop.store.set_experiment(loop.exp.id, status="failed")
            raise
    print(
        f"best: iteration {best['iteration']} val_accuracy {best['val_accuracy']:.4f} "
        f"test_accuracy {best['test_accuracy']} | {display.one_line(best['hypothesis'])}"
    )
    return best


def research_loop(loop: Loop, began: datetime, deadline: float | None) -> dict[str, Any]:
    """The baseline if there is none, then candidates until the run's target, its deadline or the proposer's end,
    every slot kept busy. An error stops it only once no run is being measured any more."""
    slots = measuring_slots(loop)
    try:
        status = decide_all(loop, slots, began, deadline)
    except Exception:
        slots.drain()
        raise
    loop.store.set_experiment(loop.exp.id, status=status)
    return incumbent_of(loop.history()).as_dict()


def measuring_slots(loop: Loop) -> Measuring:
    """Where the experiment's runs are measured: this machine's slots, a pool's workers, or both."""
    cfg = loop.cfg
    if not cfg.pool:
        return SlotPool(loop.bench, loop.slots)
    here = cfg.local_slots or 0
    remote = PoolSlots(loop.bench, cfg.pool, cfg.slots, cfg.name, cfg.device, len(loop.test[1]), first_slot=here)
    return MixedSlots(SlotPool(loop.bench, loop.slots), remote) if here else remote


def why_stop_proposing(loop: Loop, deadline: float | None) -> tuple[str, str] | None:
    """(why, the run's status) when no new candidate should be proposed: the target is reached, or the next one
    would likely run past the deadline; None to go on."""
    i = max(r.iteration for r in loop.store.records(loop.exp.id)) + 1
    if i > loop.target:
        return "", "finished"
    why = out_of_time(loop, deadline, i)
    return (why, "stopped") if why else None


def decide_all(loop: Loop, slots: Measuring, began: datetime, deadline: float | None) -> str:
    """The loop over slots: look at every decision whose run arrived; give each that needs a run a free slot; with a
    slot still free, propose a candidate; then wait for the next run. Returns the run's end status."""
    if not loop.finished():
        run_baseline(loop, slots)
        publish(loop, 0)
    loop.target = target_of(loop.cfg, finished_before(loop, began))
    deciding: list[Candidate] = []
    for row in loop.unfinished():
        if guard_crashed_iteration(loop, row.iteration):
            publish(loop, row.iteration)
        else:
            deciding.append(adopted(loop, row))
    status, proposing = "finished", True
    while True:
        for cand in list(deciding):  # a look at each decision a run arrived for; the run it asks for, or its end
            if not cand.arrived and (cand.measuring or not slots.idle):
                continue
            decision, found, incumbent = look(loop, cand)
            cand.arrived = False
            if decision.verdict != Verdict.CONFIRM:  # a run still being measured for it is stored, and not used
                finish(loop, cand, decision, found, incumbent, busy=slots.run_dirs())
                deciding.remove(cand)
                publish(loop, cand.iteration)
                if proposing:  # revised the moment the count is reached, for the proposals still to come
                    try:
                        maybe_revise(loop, [c.in_flight() for c in deciding])
                    except StopResearch as exc:
                        print(f"stopping before the next candidate: {exc}")
                        status, proposing = "stopped", False
            elif slots.idle and decision.next_run not in cand.measuring:
                slots.submit(next_job(cand, decision.next_run, incumbent))
                cand.measuring.append(decision.next_run)
        if proposing and slots.idle and all(c.measuring for c in deciding):
            stop = why_stop_proposing(loop, deadline)
            if stop is not None:
                if stop[0]:
                    print(stop[0])
                status, proposing = stop[1], False
                continue
            in_flight = [c.in_flight() for c in deciding]
            try:
                maybe_revise(loop, in_flight)
                cand = new_candidate(loop, in_flight)
            except NothingToPropose:
                print(f"proposer has nothing more to propose after {candidates_finished(loop)} candidates; stopping")
                proposing = False
                continue
            except StopResearch as exc:
                print(f"stopping before the next candidate: {exc}")
                status, proposing = "stopped", False
                continue
            if cand is None:  # a failed proposal, recorded
                publish(loop, max(r.iteration for r in loop.finished()))
            else:
                deciding.append(cand)
            continue
        if not proposing:  # the last decisions: a slot nothing else needs measures the other side of one at once
            for cand in deciding:
                if slots.idle and len(cand.measuring) == 1 and cand.looked < loop.rule.max_runs - 1:
                    other = Role.INCUMBENT if cand.measuring[0] == Role.CANDIDATE else Role.CANDIDATE
                    slots.submit(next_job(cand, other, loop.incumbent()))
                    cand.measuring.append(other)
        if not slots.jobs():
            if not proposing:
                return status
            continue
        job, measured = slots.next_result()
        cand = next((c for c in deciding if c.iteration == job.decided_in), None)
        if cand is None:  # its decision ended while this run was measured: stored, and read by later decisions
            continue
        cand.measuring.remove(Role.CANDIDATE if job.iteration == cand.iteration else Role.INCUMBENT)
        cand.arrived = True
        if measured.score is None and job.iteration != cand.iteration:
            cand.incumbent_failures += 1


# the flow run is named by its experiment, so the UI lists "research-overnight", not a random name
@flow(
    name="research",
    flow_run_name="research-{config.name}",
    log_prints=True,
    retries=1,
    retry_delay_seconds=10,
    persist_result=False,
)
def research(config: ExperimentConfig, change_rule: bool = False) -> dict[str, Any]:
    """Run (or resume) one experiment until `iterations` iterations have finished. change_rule: a resumed run may
    change the experiment's rule or proposer (recorded); any other change of a fixed setting is refused."""
    return run_experiment(config, change_rule)
