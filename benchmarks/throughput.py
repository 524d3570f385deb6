"""
Benchmark: what slots buy (infra/sandbox/slots.py). The same candidates at the same budget are measured (train in
the sandbox, then the fixed evaluation: what one measured run of the loop is) with 1 slot and then with 2, in one
invocation, and for each it prints

    runs per hour            measured runs / wall hours
    utilisation              candidate training seconds / (slots x wall seconds): how much of the slots' time trains
    epochs per run           mean, and per candidate: equal compute means the same epochs per run in either setting

Targets (issue: slots): with 2 slots at least 1.8x the runs per hour of 1 slot, each candidate's epochs per run within
10% of its 1-slot figure. The last line reads

    throughput: 2 slots 1.93x the runs per hour of 1; epochs per run -1.2% (worst candidate -3.5%)

Usage: python benchmarks/throughput.py [--runs 8] [--budget 20] [--slots 1,2] [--device cuda:0]
(--device: GPU slots, one per listed device, beside the CPU rows; on a GPU machine only).

--pool: what a measured run costs through a Prefect work pool (flows/pool_slots.py) against a local slot. It starts
`autoresearch ui` and one `autoresearch worker --slots 1` on this machine (an SQLite store), measures the runs one
at a time on a local slot and then through the pool, and prints each run's wall time, submission to stored result,
and the last line

    throughput --pool: +4.1 s per run through the pool (local 31.0 s, pool 35.1 s), 116 against 101 runs/hour
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import prepare  # noqa: E402
from infra.sandbox.allowances import measure_allowances  # noqa: E402
from infra.sandbox.slots import Slot, plan_slots  # noqa: E402
from infra.sandbox.trial import TrialResult, score_trial, train_candidate  # noqa: E402
from infra.settings import BASELINE_TRAIN_PY, REPO_ROOT, Limits  # noqa: E402

WORKER_LOG = Path(tempfile.gettempdir()) / "throughput-pool-worker.log"
SMALL_CNN = Path(__file__).with_name("small_cnn_train.py").read_text()
CANDIDATES = {"baseline": BASELINE_TRAIN_PY.read_text(), "small_cnn": SMALL_CNN}


@dataclass(frozen=True)
class Pass:
    """One setting measured: its slots, wall time and runs."""

    slots: int
    wall_s: float
    runs: list[tuple[str, TrialResult]]

    @property
    def runs_per_hour(self) -> float:
        return len(self.runs) / self.wall_s * 3600

    @property
    def utilisation(self) -> float:
        return sum(r.train_seconds or 0.0 for _, r in self.runs) / (self.slots * self.wall_s)

    def epochs(self, name: str | None = None) -> float:
        return statistics.fmean(r.epochs or 0 for n, r in self.runs if name in (None, n))


def measure_pass(
    slots: list[Slot], jobs: list[tuple[str, int]], limits: Limits, scratch: Path, val, device: str | None
) -> Pass:
    """Measure every job (candidate, seed) on the slots, each slot taking the next job when it is free."""
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)
    done: list[tuple[str, TrialResult]] = []
    lock = threading.Lock()

    def work(slot: Slot) -> None:
        while True:
            try:
                name, seed = todo.get_nowait()
            except queue.Empty:
                return
            run_dir = scratch / f"{len(slots)}-slots-{name}-{seed}"
            result = score_trial(
                train_candidate(CANDIDATES[name], run_dir, limits, seed, device, slot=slot), val, limits, slot
            )
            with lock:
                done.append((name, result))
            print(
                f"  {slot.name}: {name} seed {seed}: {result.status} {result.epochs} epochs, val {result.val_accuracy}",
                flush=True,
            )

    started = time.monotonic()
    threads = [threading.Thread(target=work, args=(slot,)) for slot in slots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Pass(len(slots), time.monotonic() - started, done)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=REPO_ROOT, env={**os.environ, **(env or {})},
        capture_output=True, text=True, check=True,
    )  # fmt: skip


def pool_pass(jobs: list[tuple[str, int]], limits: Limits, scratch: Path, val) -> list[float]:
    """Each job through a pool with one worker of one slot, one at a time: the wall seconds from submission to the
    stored, scored run."""
    from flows.pool_slots import PoolSlots
    from infra.prefect_server import free_port, reporting_to
    from infra.store import Store
    from tasks.measure import Bench, Job

    home = scratch / "coordinator"
    started = cli("ui", "--home", str(home), "--port", str(free_port()), "--background")
    url = next(line.split()[2] for line in started.stdout.splitlines() if line.startswith("prefect API:"))
    env = {"PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": (home / "prefect-credentials").read_text().strip()}
    db = f"sqlite:///{home / 'autoresearch.db'}"
    cli("db", "upgrade", "--db", db, "--home", str(home))
    worker_log = open(WORKER_LOG, "w")  # noqa: SIM115 (the worker's, open while it runs)
    print(f"throughput --pool: the worker's log is {WORKER_LOG}")
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--pool", "bench", "--db", db, "--slots", "1", "--name", "bench",
         "--home", str(scratch / "worker")],
        env={**os.environ, **env}, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    walls = []
    try:
        with reporting_to(url, env["PREFECT_API_AUTH_STRING"]):
            store = Store(db, upgrade=False)
            experiment = store.ensure_experiment("throughput", {})
            bench = Bench(store, experiment.id, lambda i, s: scratch / "pool-runs" / f"{i}-{s}", limits, val, "cpu")
            pool = PoolSlots(bench, "bench", 1, "throughput", "cpu", 10_000)
            for k, (name, seed) in enumerate(jobs):
                begun = time.monotonic()
                pool.submit(Job(CANDIDATES[name], k + 1, k + 1, seed))
                _, run = pool.next_result()
                walls.append(time.monotonic() - begun)
                print(
                    f"  pool: {name} seed {seed}: {run.status} {run.epochs} epochs, val {run.val_accuracy}, "
                    f"{walls[-1]:.1f} s from submission to the stored run (worker's own wall {run.wall_seconds:.1f} s)",
                    flush=True,
                )
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait()
        worker_log.close()
        cli("ui", "--stop", "--home", str(home))
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8, help="measured runs per setting (candidates alternate)")
    parser.add_argument("--budget", type=float, default=20.0)
    parser.add_argument("--slots", default="1,2", help="the slot counts to compare, the first the reference")
    parser.add_argument("--device", default=None, help="GPU slots on these devices (comma-separated), e.g. cuda:0")
    parser.add_argument("--pool", action="store_true", help="a local slot against a Prefect work pool's worker")
    args = parser.parse_args()

    counts = [int(n) for n in args.slots.split(",")]
    devices = args.device.split(",") if args.device else None
    val = prepare.load_split_uint8("val")
    names = list(CANDIDATES)
    jobs = [(names[k % len(names)], 1000 + k) for k in range(args.runs)]
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        scratch = Path(tmp)
        allowances = measure_allowances(scratch / "probe", devices[0] if devices else "cpu", cpu_threads=1)
        limits = Limits(
            budget_s=args.budget,
            startup_allowance_s=allowances.startup_s,
            export_allowance_s=allowances.export_s,
            cpu_threads=1,
        )
        print(
            f"throughput: {args.runs} runs per setting ({', '.join(names)} alternating), budget {args.budget:g} s, "
            f"allowances {allowances.startup_s:g} + {allowances.export_s:g} s"
        )
        if args.pool:
            local = measure_pass(plan_slots(1, 1), jobs, limits, scratch, val, "cpu")
            local_s = local.wall_s / len(local.runs)
            walls = pool_pass(jobs, limits, scratch, val)
            pool_s = statistics.fmean(walls)
            print(
                f"throughput --pool: {pool_s - local_s:+.1f} s per run through the pool (local {local_s:.1f} s, "
                f"pool {pool_s:.1f} s), {3600 / local_s:.0f} against {3600 / pool_s:.0f} runs/hour"
            )
            return
        passes = []
        for count in counts:
            slots = plan_slots(count, 1, devices[:count] if devices else None)
            print(f"throughput: {count} slot(s): {'; '.join(s.describe() for s in slots)}", flush=True)
            measured = measure_pass(slots, jobs, limits, scratch, val, "cuda:0" if devices else "cpu")
            passes.append(measured)
            per = ", ".join(f"{n} {measured.epochs(n):.1f}" for n in names)
            print(
                f"throughput: {count} slot(s): {len(measured.runs)} runs in {measured.wall_s:.0f} s, "
                f"{measured.runs_per_hour:.0f} runs/hour, utilisation {measured.utilisation:.2f}, epochs per run "
                f"{measured.epochs():.1f} ({per})",
                flush=True,
            )
    reference = passes[0]
    for other in passes[1:]:
        changes = [other.epochs(n) / reference.epochs(n) - 1 for n in names if reference.epochs(n)]
        worst = max(changes, key=abs)
        print(
            f"throughput: {other.slots} slots {other.runs_per_hour / reference.runs_per_hour:.2f}x the runs per hour "
            f"of {reference.slots}; epochs per run {statistics.fmean(changes):+.1%} (worst candidate {worst:+.1%})"
        )


if __name__ == "__main__":
    main()
