"""
The situation a language model is shown (the fourth prompt block, cached): the hardware and the budget, the load the
latest run was measured under, the incumbent's runs with the margin a candidate must beat now, and the history, one
row per iteration with the decision's numbers, how each run ended, the compute it got and any pre-flight fix.
"""

from __future__ import annotations

import statistics
from typing import Any

import prepare
from infra.proposers.base import Hardware, ProposalContext
from infra.records import IterationRecord, MeasuredRun, Status, seconds_per_epoch
from infra.research.acceptance_rule import Bar
from infra.sandbox.compute_record import describe

HISTORY_ROWS = 30
LOG_TAIL_LINES = 6


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


RUN_ENDINGS = {
    "ok": "stopped itself at an epoch boundary",
    "timeout": "killed at the deadline (timeout)",
    "crashed": "crashed",
    "invalid": "trained, but its model could not be scored",
}


def run_line(run: MeasuredRun) -> str:
    """One measured run, from the orchestrator's record: how it ended, epochs, seconds, the compute it got."""
    per_epoch = seconds_per_epoch(run.train_seconds, run.epochs)
    score = f", val_accuracy {run.val_accuracy:.4f}" if run.val_accuracy is not None else ""
    compute = describe(run.compute)
    return (
        f"seed {run.seed}: {RUN_ENDINGS.get(run.status, run.status)}{score}; "
        f"{_num(run.epochs, 'd')} epochs in {_num(run.train_seconds, '.1f')} s "
        f"({_num(per_epoch, '.2f')} s per epoch)"
        + (f"; inference {run.inference_seconds:.1f} CPU s" if run.inference_seconds is not None else "")
        + (f"; {compute}" if compute else "")
    )


def decision_text(f: IterationRecord) -> str:
    """The decision with the numbers that made it (acceptance_rule.summary's form)."""
    numbers = f.decision.line()
    if numbers:
        return f"{f.verdict}: {numbers}"
    if f.measurements:
        return f"{f.verdict}: mean {statistics.fmean(f.measurements):.4f} of {_plural(len(f.measurements), 'run')}"
    return f.verdict or "-"


def preflight_text(attempts: list[dict[str, Any]]) -> str:
    """The pre-flight crash and fix, if any ('' when the first version ran)."""
    if len(attempts) <= 1 and all(a.get("status") == "ok" for a in attempts):
        return ""
    steps = []
    for a in attempts:
        fix = f" (fix: {a.get('note')})" if a.get("attempt") else ""  # attempt 0 is the proposal itself
        reason = f": {a.get('reason')}" if a.get("status") != "ok" and a.get("reason") else ""
        steps.append(f"attempt {a.get('attempt')}{fix} {a.get('status')}{reason}")
    return "pre-flight: " + "; ".join(steps)


HISTORY_HEADER = (
    "iteration | type | status | decision (delta vs the incumbent then, how sure, runs, what a keep needed) | "
    "epochs | training s | s per epoch | hypothesis"
)


def history_text(history: list[IterationRecord]) -> str:
    if not history:
        return "No iterations yet."
    lines = [HISTORY_HEADER]
    for f in history[-HISTORY_ROWS:]:
        lines.append(
            f"{f.iteration} | {f.change_type} | {f.status} | {decision_text(f)} | {_num(f.epochs, 'd')} | "
            f"{_num(f.train_seconds, '.1f')} | {_num(f.seconds_per_epoch, '.2f')} | "
            f"{f.hypothesis}"
        )
        if f.expected_effect:
            lines.append(f"    expected: {f.expected_effect}")
        lines.extend(f"    run {run_line(run)}" for run in f.runs)
        if preflight_text(f.attempts):
            lines.append(f"    {preflight_text(f.attempts)}")
        if f.status != Status.OK:
            lines.append(f"    reason: {f.reason}")
            lines.extend(f"    | {tail}" for tail in f.log_tail.splitlines()[-LOG_TAIL_LINES:])
    return "\n".join(lines)


def hardware_text(hw: Hardware) -> str:
    threads = hw.cpu_threads
    clock = (
        f" of CPU time on {threads} allotted cores (torch gets {threads} threads; a busy machine does not "
        f"shorten it, and more threads only spend it faster)"
        if threads
        else " of wall time, the device to itself"
    )
    device = hw.device
    if hw.device_name:
        memory = f", {hw.device_memory_gib:g} GiB" if hw.device_memory_gib else ""
        device += f" ({hw.device_name}{memory})"
    lines = [f"Hardware: device {device}; training budget {hw.budget_s:g} s{clock} per candidate."]
    if hw.startup_allowance_s is not None:
        lines.append(
            f"Start-up allowance {hw.startup_allowance_s:g} s before the budget starts; the export allowance "
            f"after the deadline, to save and exit before SIGKILL, {hw.export_allowance_s or 0:g} s "
            f"(both on the budget's clock, in total, not per core)."
        )
    if hw.inference_allowance_s is not None:
        lines.append(
            f"Inference allowance: {hw.inference_allowance_s:g} CPU s on one core per 10,000 images, "
            f"batches of {prepare.EVAL_BATCH_SIZE} (the seed's 3-block CNN takes about 5); a model over it is "
            f"invalid."
        )
    if hw.cpu_cores:
        lines.append(
            f"Machine: {hw.cpu_cores} CPU cores ({hw.usable_cores or hw.cpu_cores} usable by the "
            f"sandbox); memory cap per candidate {hw.memory_cap_gib or 0:g} GiB of host memory."
        )
    if hw.slots > 1:
        lines.append(
            f"{hw.slots} measurement slots: {hw.slots} candidates are measured side by side, each on its "
            f"own cores (and GPU), with the same budget."
        )
    return "\n".join(lines)


def load_text(history: list[IterationRecord]) -> str:
    """Whether the latest measurement was taken under load (from its compute record)."""
    measured = [(f.iteration, run) for f in history for run in f.runs if run.compute is not None]
    if not measured:
        return "No measured runs yet: the machine's load is unknown."
    iteration, run = measured[-1]
    compute = run.compute
    state = (
        "CONTENDED: the machine's load starved it (such runs are measured again)"
        if compute.contended
        else "not contended"
    )
    free = (
        f"{compute.free_cores:.1f} cores left free by the rest of the machine, "
        if compute.free_cores is not None
        else ""
    )
    return f"Load: the latest measured run (iteration {iteration}, seed {run.seed}) had {free}{state}."


def incumbent_text(f: IterationRecord | None, bar: Bar | None) -> str:
    """The incumbent's current runs, mean and noise, and the margins a candidate must beat now (the rule's own
    numbers: acceptance_rule.Bar)."""
    if f is None:
        return "No incumbent measured yet."
    lines = [f"The incumbent is iteration {f.iteration} ({f.hypothesis})."]
    if bar is not None and bar.scores:
        lines.append(
            f"Its {_plural(len(bar.scores), 'current run')} (measured within the drift window): "
            f"{', '.join(f'{s:.4f}' for s in bar.scores)}; reference mean {bar.mean:.4f}; noise of one run "
            f"{bar.sigma:.4f} (with the experiment's floor {bar.floor_sigma:.4f})."
        )
        lines.append(
            f"A first run below {bar.mean + bar.continue_above:.4f} ({bar.continue_above * 100:+.2f} points) is "
            f"discarded at once; above it, the candidate gets more runs, up to {bar.max_runs}."
        )
        lines.append(
            f"To be kept, the mean of its runs must beat the incumbent's by about "
            f"{bar.keep_at_min * 100:.2f} points after {bar.min_keep_runs} runs, or "
            f"{bar.keep_at_max * 100:.2f} points after {bar.max_runs} (and never by less "
            f"than {bar.min_delta * 100:.2f})."
        )
    if f.runs:
        lines.append("Its runs when it was decided:")
        lines.extend(f"    run {run_line(run)}" for run in f.runs)
    return "\n".join(lines)


def situation(ctx: ProposalContext) -> str:
    return (
        f"# Hardware and budget\n\n{hardware_text(ctx.hardware)}\n{load_text(ctx.history)}\n\n"
        f"# The incumbent and the margin to beat now\n\n{incumbent_text(ctx.incumbent, ctx.bar)}\n\n"
        f"# History (oldest first)\n\n{history_text(ctx.history)}"
    )
