"""
Benchmark: what a hostile candidate's output costs the orchestrator, and what the hardening costs an honest run.

1. A candidate prints one 1 GiB line and then 1 GiB of short lines, through the real sandbox: the
   orchestrator's resident memory before and at its peak (VmHWM), the log's size, the throughput.
   Target: the orchestrator stays bounded (the issue's target is < 500 MB resident; importing the
   CUDA build of torch alone costs about 520 MB here, so the growth is what the candidate controls).
2. The fixed cost of one sandboxed run of a candidate that saves a linear model at once (interpreter,
   torch import, data, export, and the orchestrator's own work: writing the split, taking the artifact
   out, removing work/), and the allowances' probe.

Usage: python benchmarks/hostile_output.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import prepare  # noqa: E402
from infra.sandbox import process_tree  # noqa: E402
from infra.sandbox.allowances import measure_allowances  # noqa: E402
from infra.sandbox.trial import train_candidate  # noqa: E402
from infra.settings import Limits  # noqa: E402

FLOOD = """
import sys
line = "y" * 2**30
sys.stdout.write(line + "\\n")
del line
chunk = ("z" * 99 + "\\n") * 100_000
for _ in range(107):
    sys.stdout.write(chunk)
sys.stdout.flush()
"""
SAVE_AT_ONCE = (
    "from prepare import save_model\nfrom torch import nn\n"
    "save_model(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))\n"
)


def rss_mib() -> float:
    return process_tree.rss_bytes([os.getpid()]) / 2**20


def peak_mib() -> float:
    return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024


def main() -> None:
    prepare.ensure_data()
    prepare.load_split_uint8("val")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        allowances = measure_allowances(Path(tmp) / "probe")
        probe_s = time.perf_counter() - started
        print(
            f"startup_allowance_s: {allowances.startup_s:g}, export_allowance_s: {allowances.export_s:g} "
            f"(probe took {probe_s:.1f} s)"
        )
        limits = Limits(
            budget_s=30,
            startup_allowance_s=allowances.startup_s,
            export_allowance_s=allowances.export_s,
            memory_cap_bytes=6 * 2**30,
        )

        walls = []
        for k in range(3):
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM)
            before = rss_mib()
            started = time.perf_counter()
            result = train_candidate(SAVE_AT_ONCE, Path(tmp) / f"honest-{k}", limits)
            walls.append(time.perf_counter() - started)
            assert result.status == "ok", result.reason
        print(f"save_at_once_trial_wall_s: {', '.join(f'{w:.2f}' for w in walls)}")
        print(f"orchestrator_rss_growth_honest_run_mib: {peak_mib() - before:.0f} (writing the run's training split)")

        Path("/proc/self/clear_refs").write_text("5")
        before = rss_mib()
        started = time.perf_counter()
        result = train_candidate(FLOOD, Path(tmp) / "flood", limits)
        wall = time.perf_counter() - started
        log_kib = Path(result.log_path).stat().st_size / 1024
        print(f"flood: status {result.status}, 2 GiB of output in {wall:.1f} s ({2048 / wall:.0f} MiB/s)")
        print(f"orchestrator_rss_before_mib: {before:.0f}")
        print(f"orchestrator_rss_peak_mib: {peak_mib():.0f} (growth {peak_mib() - before:.0f} MiB)")
        print(f"log_kib: {log_kib:.0f}")


if __name__ == "__main__":
    main()
