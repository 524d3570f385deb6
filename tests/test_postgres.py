"""
The store, the experiment lock and the Prefect server on PostgreSQL: a private cluster started by the tests
(tests/postgres_cluster.py). The same SQLAlchemy models and Alembic migrations as on SQLite; migrations run once
(`autoresearch db upgrade`, or the coordinator), and any other opener refuses a schema that is behind; concurrent
writers number runs and iterations once; the experiment lock is an advisory lock that a SIGKILLed holder frees; the
loop runs end to end with its store (and an Optuna study) there; `autoresearch ui --database-url` keeps Prefect's own
state there; a pool worker's role with the grants `autoresearch db worker-grants` prints does its part, no more.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import create_engine, inspect

from infra.records import MeasuredRun, Status
from infra.research.lock import LockHeld, database_holder, database_lock
from infra.settings import REPO_ROOT
from infra.store import Store, StoreBusy, StoreError
from infra.store.store import head_revision, migrate, schema_revision
from tests.conftest import requires_bwrap, requires_real_data
from tests.postgres_cluster import USER, Cluster, free_port, why_not
from tests.test_loop_parts import number_iterations_concurrently, number_runs_concurrently

pytestmark = pytest.mark.skipif(why_not() is not None, reason=why_not() or "")


@pytest.fixture(scope="module")
def cluster():
    started = Cluster()
    yield started
    started.stop()


def cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("PREFECT_API_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=REPO_ROOT, env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_migrations_run_once_and_other_openers_refuse_a_schema_behind(cluster, tmp_path):
    url = cluster.url(cluster.database())
    with pytest.raises(StoreError, match="has schema revision none .* run `autoresearch db upgrade"):
        Store(url)
    assert "test" not in inspect(create_engine(url)).get_table_names()  # refusing made nothing
    done = cli("db", "upgrade", "--db", url, "--home", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert f"schema revision none -> {head_revision()}" in done.stdout
    store = Store(url)  # at this code's revision now: opens without migrating
    assert schema_revision(store.engine) == head_revision()
    exp = store.ensure_experiment("pg", {"budget_s": 5.0})
    store.put_iteration(exp.id, 0, hypothesis="baseline", status="ok", verdict="baseline", val_accuracy=0.8)
    (record,) = store.records(exp.id)
    assert (record.iteration, record.hypothesis, record.val_accuracy) == (0, "baseline", 0.8)
    again = cli("db", "upgrade", "--db", url, "--home", str(tmp_path))
    assert f"schema revision {head_revision()} -> {head_revision()}" in again.stdout


def test_coordinators_starting_together_migrate_once(cluster):
    url = cluster.url(cluster.database())
    errors: list[BaseException] = []

    def coordinator() -> None:
        try:
            migrate(url)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=coordinator) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert schema_revision(Store(url).engine) == head_revision()


def test_concurrent_writers_number_runs_and_iterations_once(cluster):
    url = cluster.url(cluster.database())
    Store(url, upgrade=True)
    number_runs_concurrently(url)
    number_iterations_concurrently(url)


HOLDER = """
import sys, time
from infra.records import MeasuredRun, Status
from infra.research.lock import database_lock
with database_lock(sys.argv[1], "night"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_the_experiment_lock_is_an_advisory_lock_a_dead_holder_frees(cluster):
    url = cluster.url(cluster.database())
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert f"autoresearch pid {holder.pid}" in database_holder(url, "night")
        with pytest.raises(LockHeld, match=f"experiment 'night' is already running \\(autoresearch pid {holder.pid}"):
            with database_lock(url, "night"):
                pass
        with database_lock(url, "another"):  # one lock per experiment
            assert database_holder(url, "another").startswith(f"autoresearch pid {os.getpid()}")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 60  # the server notices the closed socket at once; a bound, not a timing
    while database_holder(url, "night") is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    with database_lock(url, "night"):
        assert database_holder(url, "night").startswith(f"autoresearch pid {os.getpid()}")
    assert database_holder(url, "night") is None


@requires_real_data
@requires_bwrap
@pytest.mark.process_driven
def test_the_loop_runs_with_its_store_on_postgresql(cluster, tmp_path):
    """`autoresearch run --db postgresql+psycopg://...` on an empty database: the coordinator migrates it, the loop
    runs (the optuna proposer's study there too), and `history` and `status` read it back."""
    import optuna

    from infra.proposers.optuna_search import storage, study_name

    url = cluster.url(cluster.database())
    home = tmp_path / "runs"
    env = {"PREFECT_HOME": str(home / "prefect-home")}
    done = cli(
        "run", "--experiment", "pg", "--iterations", "2", "--budget", "2", "--proposer", "optuna", "--db", url,
        "--home", str(home), env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    store = Store(url)
    records = store.records(store.experiment("pg").id)
    assert [r.iteration for r in records] == [0, 1, 2] and all(r.finished for r in records)
    study = optuna.load_study(study_name=study_name("pg"), storage=storage(url))
    assert sorted(t.user_attrs["iteration"] for t in study.trials) == [1, 2]
    status = cli("status", "--db", url, "--home", str(home))
    assert status.returncode == 0 and "pg" in status.stdout and "finished" in status.stdout


@pytest.mark.process_driven
def test_the_prefect_server_keeps_its_state_on_postgresql(cluster, tmp_path):
    url = cluster.url(cluster.database(), driver="asyncpg")
    home = tmp_path / "runs"
    bad = cli("ui", "--home", str(home), "--database-url", "mysql://somewhere/prefect")
    assert bad.returncode == 2 and "--database-url must start with postgresql+asyncpg://" in " ".join(
        bad.stderr.split()
    )
    started = cli("ui", "--background", "--port", str(free_port()), "--home", str(home), "--database-url", url)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
    finally:
        stopped = cli("ui", "--stop", "--home", str(home))
    assert "stopped the Prefect server" in stopped.stdout
    tables = set(inspect(create_engine(url.replace("+asyncpg", "+psycopg"))).get_table_names())
    assert {"flow_run", "task_run", "deployment"} <= tables, tables  # Prefect migrated its schema there
    assert not (home / "prefect-ui" / "prefect.db").exists()  # not the default SQLite file


def test_a_worker_role_with_the_printed_grants_does_a_workers_part_and_nothing_else(cluster, tmp_path):
    url = cluster.url(cluster.database())
    coordinator = Store(url, upgrade=True)
    experiment = coordinator.ensure_experiment("pg-workers", {"budget_s": 5.0})
    printed = cli("db", "worker-grants", "pool_worker")
    assert printed.returncode == 0, printed.stderr
    with create_engine(url).begin() as conn:
        conn.exec_driver_sql("CREATE ROLE pool_worker LOGIN")
        for statement in printed.stdout.splitlines():
            conn.exec_driver_sql(statement)
    worker_url = url.replace(f"//{USER}@", "//pool_worker@")
    worker = Store(worker_url, upgrade=False)  # reads the schema's revision
    job_id = "c" * 32
    assert worker.claim_pool_job(job_id, "w1")
    worker.beat_pool_job(job_id, "w1")
    assert worker.answer_pool_job(job_id, "w1", b'{"job_id": "..."}', b"model bytes")
    (lease,) = coordinator.pool_jobs([job_id], max_answer_bytes=2**20)
    assert lease.worker == "w1" and lease.answer == b'{"job_id": "..."}'
    assert coordinator.pool_model(job_id, 2**20) == b"model bytes"
    run = MeasuredRun(seq=0, iteration=0, decided_in=0, seed=1, status=Status.OK, val_accuracy=1.0, reason="forged")
    with pytest.raises(Exception, match="permission denied"):
        worker.add_measured_run(experiment.id, run)
    with pytest.raises(Exception, match="permission denied"):
        worker.forget_pool_jobs([job_id])
    assert coordinator.measured_runs(experiment.id) == [], "nothing forged"
    for bad in ("w; DROP TABLE pool_jobs", "public", "pg_read_all_data"):
        refused = cli("db", "worker-grants", bad)
        assert refused.returncode == 2 and "role" in refused.stderr, (bad, refused.stdout)
    # a claim's times are a worker's to write, within what every driver reads back (the coordinator reads them)
    with pytest.raises(Exception, match="ck_pool_jobs_times"):
        with create_engine(worker_url).begin() as conn:
            conn.exec_driver_sql(f"UPDATE pool_jobs SET beat_at = 'infinity' WHERE job_id = '{job_id}'")
    # a worker's session holding the table locked stalls the pool's reads, boundedly: StoreBusy, not a hang
    with create_engine(worker_url).connect() as conn:
        conn.exec_driver_sql("BEGIN; LOCK TABLE pool_jobs IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(StoreBusy, match="locked"):
            coordinator.pool_jobs([job_id], max_answer_bytes=2**20)
        conn.rollback()
    assert coordinator.pool_jobs([job_id], max_answer_bytes=2**20)[0].worker == "w1"
