"""
The two allowances around every candidate's budget, on the budget's clock (infra/sandbox/watchdog.py: CPU
seconds of the whole run on a CPU, wall seconds on a GPU):

    launch ──start-up allowance──> ──budget──> deadline ──export allowance──> SIGKILL

    start-up  the interpreter, torch's import, the training split onto the device, building the model
    export    prepare.save_model (torch.export's first import, trace, decompose, write, check) and the
              interpreter's exit

Measured, not guessed, and not a fixed grace: time after the deadline must buy no training, so the export
allowance is what an export needs and no more. One reference run (REFERENCE: the orchestrator's code, not a
candidate's) goes through the same sandbox, on the same device and clock as the candidates: it starts up as
a candidate does, prints the budget marker (prepare.TrainingBudget), trains for nothing and exports a
reference CNN. The sandbox reads the run's clock the moment the marker line arrives (infra/sandbox/run.py),
so one run measures both from outside: start-up = launch to the marker, export = the marker to exit.
(Two runs, one with the export and one without, would measure the export as a difference of two start-ups,
which varied by 0.5 CPU s between runs here.)

The reference CNN is the seed's 3-block CNN (benchmarks/cnn3.py) with two convolutions per block: an
export's cost grows with the graph (about 0.3-0.5 CPU s per 100 graph nodes, measured), so a candidate
somewhat deeper than the seed's still fits; a slower export must start before the deadline, and the
timeout's reason says so (infra/sandbox/trial.py).

(torch.export's first use costs about 1.4 CPU s of imports. Warming it up during start-up would move that
from one allowance to the other without lowering what a candidate that skips it can gain: measured, the two
allowances then summed 0.9 CPU s more.)

Each allowance is 1.1 x its measured time + 0.5 s, rounded up to a tenth of a second. An experiment
measures them once and stores them, so every candidate in it, resumed runs included, gets the same limits.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import prepare
from infra.sandbox.run import run_sandboxed
from infra.sandbox.safe_files import remove_tree
from infra.sandbox.slots import Slot
from infra.sandbox.trial import fresh_run_dir, read_log, train_job
from infra.settings import Limits

REFERENCE = """\
import torch
from torch import nn

import prepare

device = prepare.get_device()
prepare.load_split("train", device)


def block(c_in, c_out):
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]


model = nn.Sequential(*block(1, 32), *block(32, 64), *block(64, 128), nn.Flatten(), nn.Linear(128 * 3 * 3, 10))
model = model.to(device)
prepare.TrainingBudget(1.0)  # prints the budget marker: start-up ends here, and this reference trains for nothing
prepare.save_model(model)
"""
PROBE_LIMIT_S = 300.0  # a start-up or export slower than this is a broken machine, not a slow one


@dataclass(frozen=True)
class Allowances:
    """What every candidate of an experiment gets before its budget and after its deadline, on the budget's clock."""

    startup_s: float
    export_s: float
    measured_startup_s: float  # what the reference took, for the record
    measured_export_s: float
    clock: str  # 'cpu' (CPU seconds of the whole run, not per core) or 'wall'


def allowance_for(seconds: float) -> float:
    """1.1 x a measured time + 0.5 s, rounded up to a tenth of a second."""
    return math.ceil((1.1 * seconds + 0.5) * 10) / 10


def measure_allowances(
    scratch: Path, device: str | None = None, memory_cap_bytes: int = 0, cpu_threads: int = 0, slot: Slot | None = None
) -> Allowances:
    """Run REFERENCE in the sandbox (in scratch, removed afterwards) and return the allowances for it; in a slot,
    pinned as the candidates will be."""
    limits = Limits(
        budget_s=1.0,
        startup_allowance_s=PROBE_LIMIT_S,
        export_allowance_s=PROBE_LIMIT_S,
        memory_cap_bytes=memory_cap_bytes,
        cpu_threads=cpu_threads,
    )
    scratch = Path(os.path.abspath(scratch))
    fresh_run_dir(REFERENCE, scratch)
    try:
        split = prepare.write_train_split(scratch / "data" / "train.pt")
        split.chmod(0o444)
        outcome = run_sandboxed(train_job(scratch, limits, 0, split, device, slot))
        if outcome.exit_code != 0 or outcome.marker_at_s is None or outcome.after_marker_s is None:
            tail = "\n".join(read_log(outcome.log_path).splitlines()[-5:])
            raise RuntimeError(
                f"the reference start-up and export failed in the sandbox (exit {outcome.exit_code}, "
                f"signal {outcome.signal}, {outcome.killed_for or 'not killed'}):\n{tail}"
            )
        startup, export = outcome.marker_at_s, outcome.after_marker_s
        return Allowances(
            startup_s=allowance_for(startup),
            export_s=allowance_for(export),
            measured_startup_s=round(startup, 2),
            measured_export_s=round(export, 2),
            clock=outcome.compute.clock,
        )
    finally:
        remove_tree(scratch)
