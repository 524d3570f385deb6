"""
Three machines on one: a coordinator (`autoresearch run --pool`) and pool workers (`autoresearch worker`), each a
process of its own with its own working and runs directory (no run directory shared), a real Prefect server
(`autoresearch ui`) and the store on a real PostgreSQL (tests/postgres_cluster.py; SQLite where the server binaries
are missing). Two runs in flight, each decided and recorded once; a worker SIGKILLed mid-run and restarted, its job
measured again; the coordinator SIGKILLed with a job in flight and resumed; a kept run's model file brought back;
local slots and the pool measuring one experiment together; a deployed experiment's run on the pool; a worker whose
prepare.py differs refusing, and the run failing with its reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound

from flows.pool_slots import measurement_deployment
from infra.prefect_server import free_port, reporting_to
from infra.research.code_edit import set_constants
from infra.settings import BASELINE_TRAIN_PY, REPO_ROOT
from infra.store import Store
from tests.conftest import requires_bwrap, requires_real_data
from tests.postgres_cluster import Cluster, why_not

pytestmark = [requires_real_data, requires_bwrap, pytest.mark.process_driven]


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    """A fresh database on a private PostgreSQL cluster, or an SQLite file where there is no server to start."""
    cluster = Cluster() if why_not() is None else None
    url = cluster.url(cluster.database()) if cluster else f"sqlite:///{tmp_path_factory.mktemp('store') / 'a.db'}"
    try:
        upgraded = cli("db", "upgrade", "--db", url, "--home", str(tmp_path_factory.mktemp("upgrade")))
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr  # workers never migrate: the operator does
        yield url
    finally:
        if cluster:
            cluster.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`autoresearch ui` in the background: the coordinator and the workers talk to it with its credentials."""
    home = tmp_path_factory.mktemp("server")
    started = cli("ui", "--home", str(home), "--port", str(free_port()), "--background")
    assert started.returncode == 0, started.stdout + started.stderr
    url = next(line.split()[2] for line in started.stdout.splitlines() if line.startswith("prefect API:"))
    env = {"PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": (home / "prefect-credentials").read_text().strip()}
    yield env
    cli("ui", "--stop", "--home", str(home))


def cli(
    *args: str, env: dict | None = None, cwd: Path = REPO_ROOT, timeout: float = 900
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


class Worker:
    """`autoresearch worker` in a directory of its own (and, given a checkout, running that checkout's code)."""

    def __init__(self, name: str, pool: str, store_url: str, env: dict, root: Path, checkout: Path = REPO_ROOT):
        self.name, self.root = name, root
        self.log = root / f"{name}.log"
        self.args = ["worker", "--pool", pool, "--db", store_url, "--slots", "1", "--name", name]
        self.env = {**os.environ, **env, **({"PYTHONPATH": str(checkout)} if checkout != REPO_ROOT else {})}
        self.checkout = checkout
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        (self.root / "cwd").mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", *self.args, "--home", str(self.root / "runs")],
                cwd=self.root / "cwd", env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self

    def kill(self) -> None:
        """SIGKILL the worker and everything it started (its flow runs have process groups of their own)."""
        if self.proc is None:
            return
        for pid in [*descendants(self.proc.pid), self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.proc = None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return [d for c in children for d in [*descendants(c), c]]


def wait_for(what, timeout: float, why: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {why}")


class Coordinator:
    """`autoresearch run --pool` in the background, its output in a file (kept across a SIGKILL and a restart)."""

    def __init__(self, pool: str, store_url: str, env: dict, home: Path, *extra: str):
        self.log = home.parent / f"{home.name}.log"
        self.args = ["run", "--pool", pool, "--db", store_url, "--home", str(home), "--budget", "2", *extra]
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen | None = None

    def start(self) -> Coordinator:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", *self.args], cwd=REPO_ROOT, env=self.env, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    def finish(self, timeout: float = 900) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def run_to_end(run: Coordinator, *workers: Worker) -> tuple[int, str]:
    """The coordinator's exit code and output once it has ended; the workers stopped."""
    try:
        code = run.finish()
    finally:
        run.kill()
        for worker in workers:
            worker.kill()
    return code, run.output()


def claims(workers: list[Worker]) -> int:
    """How many jobs the workers have started measuring, from their logs."""
    return sum(w.output().count(" in slot-") for w in workers)


def test_two_workers_measure_an_experiment_through_a_killed_worker_and_a_killed_coordinator(
    store_url, server, tmp_path
):
    replay = tmp_path / "replay"
    replay.mkdir()
    baseline = BASELINE_TRAIN_PY.read_text()
    (replay / "01_lower_lr.py").write_text(set_constants(baseline, {"LEARNING_RATE": 0.02}))
    (replay / "02_wider.py").write_text(set_constants(baseline, {"LEARNING_RATE": 0.05}))
    workers = [Worker(n, "twin", store_url, server, tmp_path / n).start() for n in ("w1", "w2")]
    run = Coordinator(
        "twin", store_url, server, tmp_path / "coordinator", "--experiment", "pooled", "--slots", "2",
        "--iterations", "2", "--repeats", "2", "--proposer", f"replay:{replay}",
    ).start()  # fmt: skip
    try:
        # w1 takes a job and is SIGKILLed mid-run with everything it started; then it comes back
        wait_for(lambda: " in slot-" in workers[0].output(), 600, "w1 to start measuring a job")
        workers[0].kill()
        workers[0].start()
        shown = cli("status", "--db", store_url, "--home", str(tmp_path / "coordinator"), "--pool", "twin", env=server)
        assert shown.returncode == 0 and "workers of pool twin" in shown.stdout and "w2" in shown.stdout, shown
        # then the coordinator is SIGKILLed while a job is being measured, and started again: it resumes
        started = claims(workers)
        wait_for(lambda: claims(workers) > started, 600, "a worker to start another job")
        run.kill()
        run.start()
        assert run.finish() == 0, run.output()[-4000:]
    finally:
        run.kill()
        for worker in workers:
            worker.kill()
    out = run.output()
    assert "submitted again" in out and ("went silent" in out or "without an answer" in out), out[-4000:]

    store = Store(store_url)
    experiment = store.experiment("pooled")
    records = store.records(experiment.id)
    assert [r.iteration for r in records] == [0, 1, 2] and all(r.finished for r in records)
    runs = store.measured_runs(experiment.id)
    assert [m.seq for m in runs] == list(range(1, len(runs) + 1)), "numbered once each, in order"
    counted = [(m.iteration, m.decided_in, m.seed) for m in runs if not m.remeasured]
    assert len(counted) == len(set(counted)), "no run recorded twice"
    assert {m.worker for m in runs} == {"w1", "w2"}, [m.worker for m in runs]
    assert all(m.status == "ok" and m.val_accuracy and 0.5 < m.val_accuracy < 1 for m in runs), runs
    overlapping = [
        (a.seq, b.seq)
        for a in runs
        for b in runs
        if a.worker != b.worker and a.started_at < b.made_at and b.started_at < a.made_at
    ]
    assert overlapping, "two runs were in flight at once, on the two workers"
    for record in records:  # every decision rests on runs the store holds, decided once
        if record.iteration:
            assert {r.seq for r in record.decision.candidate_runs} <= {m.seq for m in runs}
    assert records[0].test_accuracy is not None and 0.5 < records[0].test_accuracy < 1, "scored from test logits"
    kept = next(m for m in runs if m.decided_in == 0 and not m.remeasured and m.score is not None)
    assert list((tmp_path / "coordinator").rglob(f"0000/seed-{kept.seed}/model.safetensors")), (
        "the kept baseline's model file came back from the worker that made it"
    )
    with (
        reporting_to(server["PREFECT_API_URL"], server["PREFECT_API_AUTH_STRING"]),
        get_client(sync_client=True) as client,
    ):
        crashed = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CRASHED]))
            )
        )
    assert any(run.name.startswith("measure-") for run in crashed), "the killed worker's flow run is marked Crashed"


def test_local_slots_and_a_pool_measure_one_experiment_together(store_url, server, tmp_path):
    worker = Worker("w3", "mixed", store_url, server, tmp_path / "w3").start()
    run = Coordinator(
        "mixed", store_url, server, tmp_path / "coordinator", "--experiment", "mixed", "--slots", "1",
        "--local-slots", "1", "--iterations", "1", "--repeats", "2", "--proposer", "offline",
    ).start()  # fmt: skip
    code, out = run_to_end(run, worker)
    assert code == 0, out[-4000:]
    assert "slots: 1 in flight on pool mixed and 1 here" in out, out[-4000:]
    store = Store(store_url)
    experiment = store.experiment("mixed")
    assert [r.iteration for r in store.records(experiment.id)] == [0, 1]
    runs = store.measured_runs(experiment.id)
    assert {m.worker for m in runs} == {"", "w3"}, "measured on this machine's slot and on the pool's worker"
    assert all(m.slot == (0 if m.worker == "" else 1) for m in runs), "local slots first, the pool's after"
    assert [m.seq for m in runs] == list(range(1, len(runs) + 1))
    assert experiment.config["local_slots"] == 1 and experiment.config["slots"] == 1


def test_a_deployed_experiment_measures_its_scheduled_runs_on_the_pool(store_url, server, tmp_path):
    """`autoresearch deploy --pool`: a run of the deployment (here asked for at once, its cron hours away) is a flow
    run of the serving process, and measures on the pool's worker as `run --pool` does."""
    worker = Worker("w4", "nightly", store_url, server, tmp_path / "w4").start()
    cron = f"0 {(datetime.now(timezone.utc) + timedelta(hours=12)).hour} * * *"  # no scheduled run during the test
    with open(tmp_path / "deploy.log", "a") as log:
        serving = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "deploy", "--experiment", "nightpool", "--cron", cron,
             "--pool", "nightly", "--db", store_url, "--home", str(tmp_path / "coordinator"), "--iterations", "1",
             "--budget", "2", "--repeats", "1", "--proposer", "offline"],
            cwd=REPO_ROOT, env={**os.environ, **server}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        with (
            reporting_to(server["PREFECT_API_URL"], server["PREFECT_API_AUTH_STRING"]),
            get_client(sync_client=True) as client,
        ):

            def deployment():
                try:
                    return client.read_deployment_by_name("research/nightpool")
                except ObjectNotFound:
                    return None

            found = wait_for(deployment, 300, "the deployment on the server")
            asked = client.create_flow_run_from_deployment(found.id, parameters={"experiment": "nightpool"})
            ended = wait_for(
                lambda: (state := client.read_flow_run(asked.id).state) and state.is_final() and state,
                900,
                "the deployment's run to end",
            )
    finally:
        os.killpg(serving.pid, signal.SIGKILL)
        serving.wait()
        worker.kill()
    said = (tmp_path / "deploy.log").read_text(errors="replace")[-4000:]
    assert ended.type == StateType.COMPLETED, (ended, said)
    store = Store(store_url)
    experiment = store.experiment("nightpool")
    assert [r.iteration for r in store.records(experiment.id) if r.finished] == [0, 1], said
    assert {m.worker for m in store.measured_runs(experiment.id)} == {"w4"}, "every run measured on the pool"


def test_a_worker_whose_prepare_py_differs_refuses_and_the_run_fails_with_the_reason(store_url, server, tmp_path):
    checkout = tmp_path / "checkout"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    for name in tracked.stdout.split():
        if (REPO_ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO_ROOT / name, checkout / name)
    (checkout / "prepare.py").write_text((REPO_ROOT / "prepare.py").read_text() + "\n# edited on this worker\n")
    worker = Worker("stale", "stale", store_url, server, tmp_path / "stale", checkout=checkout).start()
    # anyone with the API's credentials can ask a flow run for another command: the worker runs the measurement
    # flow regardless (app/worker.py), which fails on a job that is not one
    marker = tmp_path / "pwned"
    with reporting_to(server["PREFECT_API_URL"], server["PREFECT_API_AUTH_STRING"]):
        deployment = measurement_deployment("stale")
        with get_client(sync_client=True) as client:
            hostile = client.create_flow_run_from_deployment(
                deployment, parameters={"job": "{}"}, job_variables={"command": f"touch {marker}"}
            )
            ended = wait_for(
                lambda: (state := client.read_flow_run(hostile.id).state) and state.is_final() and state,
                600,
                "the hostile flow run to end",
            )
    assert ended.type == StateType.FAILED and not marker.exists(), ended
    run = Coordinator(
        "stale", store_url, server, tmp_path / "coordinator", "--experiment", "refused", "--iterations", "0",
        "--repeats", "1", "--proposer", "offline",
    ).start()  # fmt: skip
    code, out = run_to_end(run, worker)
    assert code != 0, out[-3000:]
    assert "refused" in out and "prepare.py differs" in out, out[-3000:]
    assert "prepare.py differs" in worker.output()
    store = Store(store_url)
    (only,) = store.measured_runs(store.experiment("refused").id)
    assert only.status == "crashed" and "3 tries" in only.reason and "prepare.py differs" in only.reason, only
