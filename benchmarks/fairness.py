"""
Benchmark: equal compute on a quiet and on a busy machine.

Runs the baseline (tiny operations, Python-bound) and a small CNN (convolutions), each REPEATS times
on a quiet machine, REPEATS times while a busy-loop process is pinned to core 0, and (--all-cores)
REPEATS times while one busy loop per core runs, all in one invocation, through the real sandbox and
evaluation. Prints each run (epochs, validation accuracy, the compute it received) and, per candidate,
the busy/quiet ratio of mean epochs (target: >= 0.9).

Usage: python benchmarks/fairness.py [--budget 10] [--repeats 3] [--cpu-threads N] [--all-cores]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import prepare  # noqa: E402
from infra.sandbox.allowances import measure_allowances  # noqa: E402
from infra.sandbox.compute_record import describe  # noqa: E402
from infra.sandbox.trial import run_trial  # noqa: E402
from infra.settings import BASELINE_TRAIN_PY, Limits  # noqa: E402

CANDIDATES = {"baseline": BASELINE_TRAIN_PY, "small_cnn": Path(__file__).with_name("small_cnn_train.py")}
BUSY_LOOP = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-threads", type=int, default=0, help="allotted cores (default: the project's default)")
    parser.add_argument("--all-cores", action="store_true", help="also measure with a busy loop on every core")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    conditions = {"quiet": [], "busy": cores[:1], **({"all-busy": cores} if args.all_cores else {})}
    val = prepare.load_split_uint8("val")
    with tempfile.TemporaryDirectory(prefix="fairness-") as tmp:
        scratch = Path(tmp)
        limits = Limits(budget_s=args.budget, cpu_threads=args.cpu_threads)
        allowances = measure_allowances(scratch / "probe", cpu_threads=limits.cpu_threads)
        limits = Limits(
            budget_s=args.budget,
            startup_allowance_s=allowances.startup_s,
            export_allowance_s=allowances.export_s,
            cpu_threads=limits.cpu_threads,
        )
        print(
            f"budget {args.budget:g} s on {limits.cpu_threads} cores (CPU clock), start-up allowance "
            f"{allowances.startup_s:g} CPU s, export allowance {allowances.export_s:g} CPU s, "
            f"{os.cpu_count()} cores on this machine"
        )
        epochs: dict[tuple[str, str], list[int]] = {}
        accuracy: dict[tuple[str, str], list[float]] = {}
        for condition, pinned in conditions.items():
            # sessions of their own, as another user's jobs would be (autogroup scheduling shares one
            # fair slice per session)
            hogs = [
                subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(core)], start_new_session=True)
                for core in pinned
            ]
            try:
                for name, path in CANDIDATES.items():
                    for n in range(args.repeats):
                        result = run_trial(
                            path.read_text(), scratch / f"{condition}-{name}-{n}", limits, seed=n, val=val
                        )
                        print(
                            f"{condition:8s} {name:9s} seed {n}: {result.status} epochs {result.epochs} "
                            f"val_accuracy {result.val_accuracy} | {describe(result.compute)}",
                            flush=True,
                        )
                        if result.status == "ok":
                            epochs.setdefault((name, condition), []).append(result.epochs or 0)
                            accuracy.setdefault((name, condition), []).append(result.val_accuracy)
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
        for name in CANDIDATES:
            for condition in list(conditions)[1:]:
                quiet, loaded = epochs.get((name, "quiet"), []), epochs.get((name, condition), [])
                if quiet and loaded:
                    print(
                        f"{name}: epochs quiet {statistics.fmean(quiet):.1f} "
                        f"{condition} {statistics.fmean(loaded):.1f} "
                        f"ratio {statistics.fmean(loaded) / statistics.fmean(quiet):.2f}; val_accuracy quiet "
                        f"{statistics.fmean(accuracy[(name, 'quiet')]):.4f} {condition} "
                        f"{statistics.fmean(accuracy[(name, condition)]):.4f}"
                    )


if __name__ == "__main__":
    main()
