"""
Benchmark: time spent outside training.

1. Per measured run (--per-run, budgets 5, 20 and 120 s): the baseline through the real sandbox and
   evaluation, split into before training (run directory and split file, sandbox, interpreter, torch
   import, data), training (budget marker to `epochs:`), export (save_model, exit, copy-out, clean-up)
   and evaluation (a sandboxed process scoring 10,000 validation images), with wall/budget.
2. Per iteration (--orchestration): what Prefect, the store, git and the artifacts cost. Overhead =
   wall time of the iterations minus the sandboxed processes (training and evaluation, confirmation and
   re-measurement runs included) minus proposing. Offline proposer, a warm private Prefect API (started
   once, before the measurement), the baseline run first.

Usage: python benchmarks/overhead.py [--per-run] [--orchestration] [--budgets 5,20,120] [--iterations 6] [--budget 1]
(neither flag: both)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import infra.sandbox.trial as trial  # noqa: E402
import prepare  # noqa: E402
import tasks.evaluate as evaluate_task  # noqa: E402
import tasks.sandboxed_train as train_task  # noqa: E402
from flows.research import research  # noqa: E402
from infra.prefect_server import prefect_api  # noqa: E402
from infra.sandbox.allowances import measure_allowances  # noqa: E402
from infra.settings import BASELINE_TRAIN_PY, Limits  # noqa: E402
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


def per_run(budgets: list[float]) -> None:
    val = prepare.load_split_uint8("val")
    code = BASELINE_TRAIN_PY.read_text()
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        allowances = measure_allowances(Path(tmp) / "probe")
        for budget in budgets:
            limits = Limits(
                budget_s=budget, startup_allowance_s=allowances.startup_s, export_allowance_s=allowances.export_s
            )
            marks: dict[str, float] = {}

            def on_line(line: str) -> None:
                for key in ("budget_start:", "epochs:"):
                    if line.startswith(key):
                        marks.setdefault(key, time.perf_counter())

            start = time.perf_counter()
            trained = trial.train_candidate(code, Path(tmp) / f"run-{budget:g}", limits, seed=1, on_line=on_line)
            exited = time.perf_counter()
            scored = trial.score_trial(trained, val, limits)
            end = time.perf_counter()
            if scored.status != "ok" or len(marks) < 2:
                print(f"budget {budget:g} s: {scored.status} ({scored.reason})")
                continue
            before, training = marks["budget_start:"] - start, marks["epochs:"] - marks["budget_start:"]
            export, evaluation = exited - marks["epochs:"], end - exited
            print(
                f"budget {budget:g} s on {limits.cpu_threads} cores: before_training {before:.2f} s, "
                f"training {training:.2f} s, export {export:.2f} s, evaluation {evaluation:.2f} s | "
                f"outside training {before + export + evaluation:.2f} s, "
                f"wall {end - start:.1f} s, wall/budget {(end - start) / budget:.2f} "
                f"({trained.compute.core_share:.0%} of its cores while it ran)",
                flush=True,
            )


def orchestration(iterations: int, budget: float) -> None:
    # count every sandboxed process: training, validation scoring and the held-out test report
    train_task.train_candidate = timed(trial.train_candidate)
    evaluate_task.score_trial = timed(trial.score_trial)
    evaluate_task.score_artifact = timed(trial.score_artifact)

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        config = dict(
            name="overhead",
            iterations=0,
            budget_s=budget,
            proposer="offline",
            revise_every=3,
            repeats=2,
            home=str(home),
            db_url=default_db_url(home),
        )
        with prefect_api(home):
            research(config)  # the baseline, and a warm API
            SANDBOX_SECONDS.clear()
            start = time.perf_counter()
            research({**config, "iterations": iterations})
            wall = time.perf_counter() - start
        store = Store(config["db_url"])
        rows = [r for r in store.iterations(store.experiment("overhead").id) if r.index > 0]
        propose = sum(r.propose_seconds or 0.0 for r in rows)
        sandbox = sum(SANDBOX_SECONDS)
        overhead = (wall - sandbox - propose) / len(rows)
        print(f"iterations: {len(rows)} (budget {budget:g} s, offline proposer)")
        print(f"sandboxed_runs: {len(SANDBOX_SECONDS)}, median {statistics.median(SANDBOX_SECONDS):.2f} s")
        print(f"wall_s: {wall:.1f}  sandbox_s: {sandbox:.1f}  propose_s: {propose:.2f}")
        print(f"overhead_per_iteration_s: {overhead:.2f} (target <= 3 s)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-run", action="store_true")
    parser.add_argument("--orchestration", action="store_true")
    parser.add_argument("--budgets", default="5,20,120", help="budgets of the per-run breakdown, seconds")
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--budget", type=float, default=1.0, help="budget of the orchestration measurement")
    args = parser.parse_args()
    both = not (args.per_run or args.orchestration)
    if args.per_run or both:
        per_run([float(b) for b in args.budgets.split(",")])
    if args.orchestration or both:
        orchestration(args.iterations, args.budget)


if __name__ == "__main__":
    main()
