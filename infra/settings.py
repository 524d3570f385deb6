"""Paths and default limits, in one place. Environment variables override; nothing here is mutable state."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PREPARE_PY = REPO_ROOT / "prepare.py"
BASELINE_TRAIN_PY = REPO_ROOT / "baseline" / "train.py"

# Start-up (interpreter, imports, data to the device) comes before the budget: every candidate gets
# the same allowance for it (by default measured once per experiment: infra/sandbox/allowances.py).
DEFAULT_STARTUP_ALLOWANCE_S = 30.0
# After the deadline, time to save the model before SIGKILL: by default measured once per experiment, like
# the start-up allowance (infra/sandbox/allowances.py: 1.1 x the export of a reference CNN + 0.5 s; 3.9-5.8 CPU s
# on the 2-core machine). Time after the deadline should buy no training, so this fallback, for runs that do not
# measure it, is about the largest measured there.
DEFAULT_EXPORT_ALLOWANCE_S = 6.0
# What one candidate may write: bytes and entries in its directory, and the size of its model.
DEFAULT_DISK_CAP_BYTES = 2 * 2**30
DEFAULT_MAX_FILES = 10_000
MAX_ARTIFACT_BYTES = 256 * 2**20  # 64 million float32 parameters: ample for 28x28 images
# A CPU run's budget is CPU time of its allotted cores (infra/sandbox/watchdog.py). One by default: with two,
# the baseline's tiny operations cost twice the CPU time per epoch on a quiet machine as on a busy one
# (thread hand-offs), so equal CPU time was not equal work (docs/benchmarks.md, benchmarks/fairness.py).
DEFAULT_CPU_THREADS = 1
# The pre-flight: a smoke run of a language model's candidate, before any budget is spent on it.
PREFLIGHT_BUDGET_S = 2.0
PREFLIGHT_IMAGES = 2000
# Inference is budgeted too: CPU seconds on one core per INFERENCE_IMAGES images, from when the model and the images
# are loaded (infra/sandbox/evaluation.py); a model over it is `invalid`. Measured through the evaluation sandbox
# (benchmarks/allowances.py, 3 runs of each; 2-core AMD EPYC VM shared with other work, one core, batches of 100;
# CPU s per 10,000 images, and the epochs a 120 s CPU budget trains): the linear baseline 0.04-0.08; the seed's
# 3-block CNN 4.5-6.0 (2.0-2.7 epochs); 40/80/160 channels 5.6-7.7 (1.5-1.7 epochs); 48/96/192 6.6-9.1 (1.2-1.4
# epochs); a kNN over the 49,000 training images held as a weight, distances by one matmul, no training, 0.855
# accuracy: 13.2-15.9 in fp32, 7.6-8.6 in bf16. 10 s fits every CNN that budget trains for more than an epoch
# (the seed's with almost twice its time) and not the fp32 kNN; a kNN built to fit (bf16, fewer images) still can.
DEFAULT_INFERENCE_ALLOWANCE_S = 10.0
INFERENCE_IMAGES = 10_000  # the allowance is per this many images (the validation and test sets' size)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # experiment names: they become directory names
NAME_RULE = "use letters, digits, '.', '_' and '-' (no path characters), at most 64, starting with a letter or digit"


def name_problem(name: str) -> str | None:
    """Why name cannot be an experiment's name, or None."""
    return None if NAME_PATTERN.match(name) else f"invalid experiment name {name!r}: {NAME_RULE}"


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_memory_cap_bytes() -> int:
    """Half of physical RAM, or AUTORESEARCH_MEMORY_CAP_GB."""
    gb = os.environ.get("AUTORESEARCH_MEMORY_CAP_GB")
    return int(float(gb) * 2**30) if gb else physical_memory_bytes() // 2


def default_cpu_threads() -> int:
    """DEFAULT_CPU_THREADS, or fewer if this process may run on fewer cores."""
    return max(1, min(len(os.sched_getaffinity(0)), DEFAULT_CPU_THREADS))


HOME_ENV = "AUTORESEARCH_HOME"


def runs_home(override: str | Path | None = None) -> Path:
    """Where experiments and scratch runs live: --home, AUTORESEARCH_HOME, or runs/ in the repo."""
    return Path(override or os.environ.get(HOME_ENV) or REPO_ROOT / "runs").resolve()


@dataclass(frozen=True)
class Limits:
    """The compute a candidate gets. Every candidate in an experiment gets the same."""

    budget_s: float
    startup_allowance_s: float = DEFAULT_STARTUP_ALLOWANCE_S  # before the budget, on the budget's clock, in total
    export_allowance_s: float | None = None  # after the deadline, in total (None: DEFAULT_EXPORT_ALLOWANCE_S)
    memory_cap_bytes: int = 0  # 0: default_memory_cap_bytes()
    inference_allowance_s: float = DEFAULT_INFERENCE_ALLOWANCE_S  # CPU s on one core per INFERENCE_IMAGES images
    disk_cap_bytes: int = DEFAULT_DISK_CAP_BYTES
    max_files: int = DEFAULT_MAX_FILES
    cpu_threads: int = 0  # allotted cores of a CPU run (0: default_cpu_threads())

    def __post_init__(self) -> None:
        seconds = (self.budget_s, self.startup_allowance_s, self.export_allowance_s or 0.0, self.inference_allowance_s)
        if not all(math.isfinite(s) for s in seconds):
            raise ValueError("the budget and the allowances must be finite numbers of seconds")
        if self.memory_cap_bytes < 0 or self.disk_cap_bytes <= 0 or self.max_files <= 0:
            raise ValueError("the memory cap must not be negative; the disk cap and the file count must be positive")
        if not self.budget_s > 0:
            raise ValueError(f"budget must be a positive number of seconds, got {self.budget_s}")
        if self.export_allowance_s is None:
            object.__setattr__(self, "export_allowance_s", DEFAULT_EXPORT_ALLOWANCE_S)
        if self.startup_allowance_s < 0 or self.export_allowance_s < 0:
            raise ValueError("the start-up and export allowances must not be negative")
        if not self.inference_allowance_s > 0:
            raise ValueError(f"the inference allowance must be positive, got {self.inference_allowance_s}")
        if self.memory_cap_bytes == 0:
            object.__setattr__(self, "memory_cap_bytes", default_memory_cap_bytes())
        if self.cpu_threads < 0:
            raise ValueError(f"cpu threads must be a positive number, got {self.cpu_threads}")
        if self.cpu_threads == 0:
            object.__setattr__(self, "cpu_threads", default_cpu_threads())

    @property
    def hard_limit_s(self) -> float:
        """Seconds after launch at which a one-core candidate is SIGKILLed: deadline plus export allowance."""
        return self.startup_allowance_s + self.budget_s + self.export_allowance_s
