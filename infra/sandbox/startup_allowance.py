"""
The start-up allowance: the time every candidate gets before its budget starts, for the interpreter,
torch's import and the training split reaching the device, on the budget's clock (infra/sandbox/watchdog.py:
CPU seconds of the run on a CPU, wall seconds on a GPU).

Measured, not guessed: a fixed reference start-up (this module's REFERENCE, the orchestrator's code,
not a candidate's) runs in the same sandbox, on the same device, and the allowance is 1.1 x its time
+ 0.5 s (a candidate's own start-up also builds its model; a start-up longer than the allowance
only shortens its own training, since its deadline does not move). An experiment measures it once and
stores it, so every candidate in it, resumed runs included, gets the same limits.
`--startup-allowance SECONDS` sets it by hand.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import prepare
from infra.sandbox.run import run_sandboxed
from infra.sandbox.safe_files import remove_tree
from infra.sandbox.trial import fresh_run_dir, read_log, train_job
from infra.settings import Limits

REFERENCE = "import torch\nimport prepare\n\nprepare.load_split('train', prepare.get_device())\n"
PROBE_LIMIT_S = 300.0  # a start-up slower than this is a broken machine, not a slow one


def allowance_for(startup_seconds: float) -> float:
    """1.1 x the measured start-up + 0.5 s, rounded up to a tenth of a second."""
    return math.ceil((1.1 * startup_seconds + 0.5) * 10) / 10


def measure_startup_allowance(scratch: Path, device: str | None = None, memory_cap_bytes: int = 0,
                              cpu_threads: int = 0) -> float:
    """Run REFERENCE in the sandbox (in scratch, removed afterwards) and return the allowance for it."""
    limits = Limits(budget_s=1.0, startup_allowance_s=PROBE_LIMIT_S, grace_s=0.0, memory_cap_bytes=memory_cap_bytes,
                    cpu_threads=cpu_threads)
    scratch = Path(os.path.abspath(scratch))
    fresh_run_dir(REFERENCE, scratch)
    try:
        split = prepare.write_train_split(scratch / "data" / "train.pt")
        split.chmod(0o444)
        outcome = run_sandboxed(train_job(scratch, limits, 0, split, device))
        if outcome.exit_code != 0:
            tail = "\n".join(read_log(outcome.log_path).splitlines()[-5:])
            raise RuntimeError(f"the reference start-up failed in the sandbox (exit {outcome.exit_code}, "
                               f"signal {outcome.signal}, {outcome.killed_for or 'not killed'}):\n{tail}")
        compute = outcome.compute
        return allowance_for(compute.cpu_seconds if compute.clock == "cpu" else compute.wall_seconds)
    finally:
        remove_tree(scratch)
