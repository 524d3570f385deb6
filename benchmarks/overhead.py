"""
Benchmark: per-iteration orchestration overhead of the research flow.

Overhead = wall time of the iterations minus the sandboxed processes (training and
evaluation, confirmation and re-measurement runs included) minus proposing. It is
what Prefect, the store, git and the artifacts cost. Offline proposer, a warm
private Prefect API (started once, before the measurement), the baseline run first.

Usage: python benchmarks/overhead.py [--iterations 6] [--budget 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import infra.trial as trial  # noqa: E402
import tasks.evaluate as evaluate_task  # noqa: E402
import tasks.sandboxed_train as train_task  # noqa: E402
from flows.research import research  # noqa: E402
from infra.prefect_server import prefect_api  # noqa: E402
from infra.store import Store, default_db_url  # noqa: E402

SANDBOX_SECONDS: list[float] = []


def timed(fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SANDBOX_SECONDS.append(time.perf_counter() - start)
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--budget", type=float, default=1.0)
    args = parser.parse_args()
    # count every sandboxed process: training, validation scoring and the held-out test report
    train_task.train_candidate = timed(trial.train_candidate)
    evaluate_task.score_trial = timed(trial.score_trial)
    evaluate_task.score_artifact = timed(trial.score_artifact)

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        config = dict(name="overhead", iterations=0, budget_s=args.budget, proposer="offline", revise_every=3,
                      repeats=2, home=str(home), db_url=default_db_url(home))
        with prefect_api(home):
            research(config)  # the baseline, and a warm API
            SANDBOX_SECONDS.clear()
            start = time.perf_counter()
            research({**config, "iterations": args.iterations})
            wall = time.perf_counter() - start
        store = Store(config["db_url"])
        rows = [r for r in store.iterations(store.experiment("overhead").id) if r.index > 0]
        propose = sum(r.propose_seconds or 0.0 for r in rows)
        sandbox = sum(SANDBOX_SECONDS)
        overhead = (wall - sandbox - propose) / len(rows)
        print(f"iterations: {len(rows)} (budget {args.budget:g} s, offline proposer)")
        print(f"sandboxed_runs: {len(SANDBOX_SECONDS)}, median {statistics.median(SANDBOX_SECONDS):.2f} s")
        print(f"wall_s: {wall:.1f}  sandbox_s: {sandbox:.1f}  propose_s: {propose:.2f}")
        print(f"overhead_per_iteration_s: {overhead:.2f} (target <= 3 s)")


if __name__ == "__main__":
    main()
