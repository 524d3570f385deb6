"""
`autoresearch deploy` on the real components: the `autoresearch ui` server, the served deployment,
its flow-run subprocesses, Prefect's heartbeats and the automations. The serving process and its flow
run are SIGKILLed in the middle of a run; after a restart the killed run ends up Crashed (no heartbeat),
a new run resumes the experiment, and no iteration is lost or duplicated.
Slow by nature: a dead run is noticed only after SILENCE_S without heartbeats (Prefect's minimum
heartbeat is 30 s), so this test takes about 3-4 minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from app.deployments import SILENCE_S
from infra.experiment_config import ExperimentConfig
from infra.prefect_server import credentials, free_port
from infra.records import Verdict
from infra.research.workspace import Workspace
from infra.settings import REPO_ROOT
from infra.store import Store
from tests.conftest import requires_bwrap, requires_real_data


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give exactly one of --cron"),
        (["--cron", "0 22 * * *", "--interval", "10"], "give exactly one of --cron"),
        (["--cron", "every night"], "--cron 'every night' is not a valid cron string"),
        (["--interval", "0"], "--interval must be positive"),
        (["--interval", "10", "--hours", "-1"], "--hours must be positive"),
        (["--interval", "10", "--budget", "0"], "--budget: Input should be greater than 0"),
        (["--interval", "10", "--until", "25:00"], "--until: '25:00' is not a time of day HH:MM"),
    ],
)
def test_bad_deploy_input_fails_clearly(tmp_path, args, message):
    done = cli(tmp_path, "deploy", "--experiment", "night", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error:" in done.stderr and message in " ".join(done.stderr.split())


def test_deploy_without_a_server_says_how_to_start_one(tmp_path):
    done = cli(tmp_path, "deploy", "--experiment", "night", "--interval", "10")
    assert done.returncode == 1 and "autoresearch ui --background" in " ".join(done.stderr.split())


def cli(home: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args, "--home", str(home)],
        cwd=REPO_ROOT,
        env=env(home),
        capture_output=True,
        text=True,
        timeout=180,
        **kwargs,
    )


def env(home: Path) -> dict[str, str]:
    values = {**os.environ, "PREFECT_HOME": str(home / "prefect-client")}
    values.pop("PREFECT_API_URL", None)  # the recorded `ui` server, found by itself
    return values


def start_deploy(home: Path, log: Path, *schedule: str) -> subprocess.Popen:
    """Its own session: the serving process and its flow-run subprocesses are one process group to kill."""
    with open(log, "a") as sink:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "deploy",
                "--experiment",
                "night",
                *(schedule or ("--interval", "10")),
                "--iterations",
                "1",
                "--budget",
                "1",
                "--repeats",
                "1",
                "--proposer",
                "offline",
                "--home",
                str(home),
            ],
            cwd=REPO_ROOT,
            env=env(home),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def wait_for(what: str, check, timeout: float, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}; deploy log:\n{log.read_text()[-4000:]}")


class API:
    """The `autoresearch ui` server's REST API, with the credentials in its runs home (every call needs them)."""

    def __init__(self, home: Path, port: int):
        self.url = f"http://127.0.0.1:{port}/api"
        self.home = home

    def call(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        """One request; a 503 (the server's database busy on a loaded machine) is asked again a few times."""
        user, password = credentials(self.home).split(":", 1)
        for _ in range(5):
            response = httpx.request(method, f"{self.url}/{path}", json=body, auth=(user, password), timeout=30)
            if response.status_code != 503:
                break
            time.sleep(2)
        return response

    def post(self, path: str, body: dict | None = None):
        response = self.call("POST", path, body or {})
        response.raise_for_status()
        return response.json()


def started_ui(tmp_path: Path) -> tuple[Path, Path, API]:
    """`autoresearch ui --background` in a runs home of the test's: (home, deploy's log, the API)."""
    home, port = tmp_path / "runs", free_port()
    started = cli(home, "ui", "--background", "--port", str(port))
    assert started.returncode == 0, started.stderr
    return home, tmp_path / "deploy.log", API(home, port)


def flow_runs(api: API) -> list[dict]:
    """The runs that ran (not those a schedule left cancelled as a collision, which have a start time too)."""
    return [
        r
        for r in api.post("flow_runs/filter", {"sort": "START_TIME_ASC"})
        if r["start_time"] is not None and r["run_count"] > 0
    ]


def logged(api: API, run_id: str) -> str:
    entries = api.post("logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
    return "\n".join(entry["message"] for entry in entries)


@requires_real_data
@requires_bwrap
@pytest.mark.process_driven
def test_deploy_survives_sigkill_and_resumes(tmp_path):
    home, log, api = started_ui(tmp_path)
    store = Store(f"sqlite:///{home / 'autoresearch.db'}")
    deploy = start_deploy(home, log)
    try:

        def rows():
            exp = store.experiment("night")
            return store.iterations(exp.id) if exp else []

        # the first scheduled run: the baseline and one new iteration
        wait_for("the first run", lambda: [r.index for r in rows() if r.finished_at] == [0, 1], 240, log)
        listed = cli(home, "deployments")
        assert listed.returncode == 0 and "night" in listed.stdout and "every 10 s" in listed.stdout, listed.stdout
        # the next run, in the middle of iteration 2 (its row is written as running before training)
        wait_for("iteration 2 running", lambda: any(r.index == 2 and r.finished_at is None for r in rows()), 120, log)
        killed = next(r for r in flow_runs(api) if r["state_type"] == "RUNNING")
        kill_group(deploy)
        deploy = start_deploy(home, log)

        def state_of(run_id: str) -> str:
            return api.call("GET", f"flow_runs/{run_id}").json()["state_type"]

        wait_for("the killed run marked Crashed", lambda: state_of(killed["id"]) == "CRASHED", SILENCE_S + 150, log)
        # a later run resumes: iteration 2 is run again, once, and finished
        iteration_2 = wait_for(
            "iteration 2 finished", lambda: next((r for r in rows() if r.index == 2 and r.finished_at), None), 240, log
        )
        assert iteration_2.orchestrator_crashes == 1
        resumed = [r for r in flow_runs(api) if r["start_time"] > killed["start_time"] and r["id"] != killed["id"]]
        assert resumed and resumed[0]["deployment_id"] == killed["deployment_id"]
        # the first run after the crash keeps the killed run's session (its --hours and --iterations)
        assert "this run resumes a crashed run" in logged(api, resumed[0]["id"]), logged(api, resumed[0]["id"])
        status = cli(home, "status")
        assert status.returncode == 0 and "Crashed" in status.stdout and "resumed" in status.stdout, status.stdout
        unknown = cli(home, "deploy", "--remove", "nosuch")
        assert unknown.returncode == 1 and "no deployment named 'nosuch'" in unknown.stderr
        removed = cli(home, "deploy", "--remove", "night")
        assert removed.returncode == 0 and "night" not in cli(home, "deployments").stdout
    finally:
        kill_group(deploy)
        cli(home, "ui", "--stop")
    # no iteration lost or duplicated (at most the last one unfinished, for the next run to redo)
    indices = [r.index for r in rows()]
    assert indices == list(range(len(indices)))
    finished = [r for r in rows() if r.finished_at]
    assert [r.index for r in finished] == list(range(len(finished))) and len(indices) - len(finished) <= 1
    # store, git and train.py agree, as the next run finds them: the last kill may have landed between a store
    # write and its git commit, which every run's start (Loop.sync) puts right before anything else
    from flows.research import Loop

    Loop(ExperimentConfig(**store.experiment("night").config)).sync()
    kept = [r for r in finished if Verdict(r.verdict).kept]
    ws = Workspace(home / "night")
    assert ws.committed_iterations() == [r.index for r in kept]
    assert ws.train_py.read_text() == kept[-1].code


@requires_real_data
@requires_bwrap
@pytest.mark.process_driven
def test_deploy_with_cron_uses_the_ui_server_and_its_runs_take_the_name_only(tmp_path):
    """`deploy --cron` once built its schedule (importing Prefect) before choosing the server, and registered on a
    temporary server instead of `ui`'s (--interval is the SIGKILL test's). A deployment's run takes the experiment's
    name only: another name is refused by the run itself, any other parameter by Prefect's signature check, before
    anything is touched."""
    home, log, api = started_ui(tmp_path)
    cron = f"0 {(datetime.now(timezone.utc) + timedelta(hours=12)).hour} * * *"  # no scheduled run during the test
    deploy = start_deploy(home, log, "--cron", cron)
    try:
        deployment = wait_for(
            "the deployment on the ui server",
            lambda: next((d for d in api.post("deployments/filter") if d["name"] == "night"), None),
            120,
            log,
        )
        assert [s["schedule"].get("cron") for s in deployment["schedules"]] == [cron]
        assert deployment["parameters"] == {"experiment": "night"}
        assert set(deployment["parameter_openapi_schema"]["properties"]) == {"experiment"}
        store = Store(f"sqlite:///{home / 'autoresearch.db'}")
        assert store.experiment("night").deployed_config["budget_s"] == 1.0  # what its runs will read

        def ended(run_id: str) -> dict | None:
            run = api.call("GET", f"flow_runs/{run_id}").json()
            return run if run["state_type"] in ("FAILED", "CRASHED", "COMPLETED") else None

        create = f"deployments/{deployment['id']}/create_flow_run"
        other = api.post(create, {"parameters": {"experiment": "elsewhere"}})
        run = wait_for("the run asked for another experiment to end", lambda: ended(other["id"]), 240, log)
        said = (run["state"]["message"] or "") + logged(api, run["id"])
        assert run["state_type"] == "FAILED" and "this deployment serves experiment 'night'" in said, said
        assert store.experiment("elsewhere") is None and store.iterations(store.experiment("night").id) == []
        # any other parameter: Prefect's engine refuses to call the flow (its process exits, the run is Crashed;
        # the resume automation may then start a run of the deployment as deployed, which is all a run can be)
        extra = api.post(create, {"parameters": {"experiment": "night", "config": {"home": str(tmp_path / "x")}}})
        run = wait_for("the run given another parameter to end", lambda: ended(extra["id"]), 240, log)
        assert run["state_type"] in ("FAILED", "CRASHED") and run["run_count"] <= 1
        assert (
            "Function expects parameters ['experiment'] but was provided with parameters ['experiment', 'config']"
            in log.read_text()
        )
        assert not (tmp_path / "x").exists() and not (home / "elsewhere").exists()
    finally:
        kill_group(deploy)
        cli(home, "ui", "--stop")
