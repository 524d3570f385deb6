"""
Benchmark, end to end: what a proposer makes of a night. `autoresearch run` (the real CLI, its own Prefect server)
from the baseline, N iterations at B seconds each, then the store read back: per iteration the incumbent's
validation accuracy, the measured runs spent so far (every run: candidates', incumbents' again, the baseline's) and
the wall time since the baseline was recorded; then one summary line per repeat, and the mean over repeats.

Proposers: offline, optuna[:tpe|cmaes|random], replay:DIR, and `agent`: the replay of the seed agent's kept changes
(benchmarks/agent_replay/, written from its notes), the "what an agent found" row.

Usage: python benchmarks/research_outcome.py --proposer optuna --iterations 10 --budget 15 [--repeats 1] [--slots 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.records import IterationRecord, incumbent_of  # noqa: E402
from infra.settings import REPO_ROOT  # noqa: E402
from infra.store import Store  # noqa: E402

AGENT_REPLAY = Path(__file__).resolve().parent / "agent_replay"


def night(proposer: str, iterations: int, budget: float, slots: int | None, home: Path) -> Path:
    """One experiment through the CLI; its output is in home/cli.log. Returns the store's path."""
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "app.cli", "run", "--experiment", "outcome", "--iterations", str(iterations)]
    command += ["--budget", str(budget), "--proposer", proposer, "--home", str(home)]
    command += ["--slots", str(slots)] if slots else []
    home.mkdir(parents=True)
    with open(home / "cli.log", "w") as sink:
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"the loop failed ({done.returncode}):\n{(home / 'cli.log').read_text()[-3000:]}")
    return home / "autoresearch.db"


def outcome(db: Path, label: str) -> tuple[float, IterationRecord, float, int]:
    """Print the per-iteration table and the summary line; returns (baseline, best, minutes, kept)."""
    store = Store(f"sqlite:///{db}")
    exp = store.experiment("outcome")
    records = sorted(store.records(exp.id, finished_only=True), key=lambda r: r.finished_at)
    runs = store.measured_runs(exp.id)
    began = records[0].started_at or records[0].finished_at
    print(
        f"{'iteration':>9} {'verdict':>8} {'incumbent val':>13} {'runs spent':>10} {'wall s after 0':>14}  hypothesis"
    )
    for n, record in enumerate(records):
        incumbent = incumbent_of(records[: n + 1])
        spent = sum(1 for m in runs if m.made_at <= record.finished_at)
        wall = (record.finished_at - began).total_seconds()
        print(
            f"{record.iteration:>9} {record.verdict:>8} {incumbent.val_accuracy:>13.4f} {spent:>10} {wall:>14.0f}  "
            f"{record.hypothesis[:70]}"
        )
    best = incumbent_of(records)
    baseline = records[0].val_accuracy
    minutes = (records[-1].finished_at - began).total_seconds() / 60
    kept = sum(1 for r in records if r.verdict == "keep")
    test = f"{best.test_accuracy:.4f}" if best.test_accuracy is not None else "-"
    print(
        f"research outcome: {label}: baseline {baseline:.4f} -> best {best.val_accuracy:.4f} (test {test}) in "
        f"{minutes:.1f} min, {kept} kept, {len(runs)} runs",
        flush=True,
    )
    return baseline, best, minutes, kept


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--proposer", required=True, help="offline, optuna[:SAMPLER], replay:DIR or agent")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--budget", type=float, default=15.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--slots", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep each night's runs directory under this one")
    args = parser.parse_args()
    proposer = f"replay:{AGENT_REPLAY}" if args.proposer == "agent" else args.proposer
    label = f"{args.proposer} {args.iterations} x {args.budget:g} s"
    results = []
    with tempfile.TemporaryDirectory(prefix="research-outcome-") as tmp:
        root = args.keep or Path(tmp)
        for repeat in range(args.repeats):
            started = time.monotonic()
            db = night(proposer, args.iterations, args.budget, args.slots, root / f"night-{repeat}")
            print(f"night {repeat + 1} of {args.repeats}: {time.monotonic() - started:.0f} s wall")
            results.append(outcome(db, label))
    if args.repeats > 1:
        bests = [best.val_accuracy for _, best, _, _ in results]
        tests = [best.test_accuracy for _, best, _, _ in results if best.test_accuracy is not None]
        print(
            f"research outcome: {label} over {args.repeats} nights: baseline "
            f"{statistics.fmean(b for b, _, _, _ in results):.4f} -> best {statistics.fmean(bests):.4f} "
            f"(sd {statistics.stdev(bests):.4f}; test {statistics.fmean(tests) if tests else float('nan'):.4f}) in "
            f"{statistics.fmean(m for _, _, m, _ in results):.1f} min, "
            f"{statistics.fmean(k for _, _, _, k in results):.1f} kept"
        )


if __name__ == "__main__":
    main()
