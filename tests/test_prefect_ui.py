"""`autoresearch ui`: a persistent Prefect server that `run` reports to; its UI shows the loop; --stop and Ctrl-C end
it."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from infra import prefect_ui
from infra.prefect_server import (
    ServerRecord,
    credentials,
    free_port,
    read_record,
    record_path,
    recorded_server,
    write_record,
)
from infra.settings import REPO_ROOT
from tests.conftest import requires_bwrap, requires_chromium, requires_real_data
from tests.headless_chromium import DevTools, distinct_colours
from tests.test_cli_run import cli


def cli_env(tmp_path: Path) -> dict[str, str]:
    """The client's own Prefect home in the test's directory; no inherited API URL."""
    return {"PREFECT_HOME": str(tmp_path / "client-prefect")}


@pytest.fixture
def ui_server(tmp_path) -> Iterator[ServerRecord]:
    """`autoresearch ui --background` on a free port; stopped by its PID whatever the test did."""
    home = tmp_path / "runs"
    port = free_port()
    done = cli("ui", "--background", "--port", str(port), home=home, env=cli_env(tmp_path), timeout=200)
    record = read_record(home)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"prefect UI: http://127.0.0.1:{port}" in done.stdout
        assert record is not None and record.port == port and prefect_ui.alive(record.pid)
        yield record
    finally:
        if record is not None and prefect_ui.is_server_process(record):
            prefect_ui.terminate(record.pid)


def post(record: ServerRecord, path: str, body: dict, home: Path) -> list[dict]:
    """The REST API with the server's credentials (every call but /health needs them)."""
    user, password = credentials(home).split(":", 1)
    response = httpx.post(f"{record.url}/{path}", json=body, timeout=30, auth=(user, password))
    response.raise_for_status()
    return response.json()


@requires_real_data
@requires_bwrap
@requires_chromium
@pytest.mark.process_driven
def test_run_reports_to_the_ui_server_and_the_ui_shows_it(ui_server, tmp_path):
    home = tmp_path / "runs"
    done = cli(
        "run",
        "--experiment",
        "uitest",
        "--iterations",
        "1",
        "--budget",
        "1",
        "--proposer",
        "offline",
        "--repeats",
        "1",
        home=home,
        env=cli_env(tmp_path),
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"prefect API: {ui_server.url}" in done.stdout  # no variable exported: the record was found

    assert httpx.post(f"{ui_server.url}/flow_runs/filter", json={}, timeout=30).status_code == 401  # no credentials
    flow_runs = post(ui_server, "flow_runs/filter", {"flow_runs": {"name": {"any_": ["research-uitest"]}}}, home)
    assert len(flow_runs) == 1 and flow_runs[0]["state_type"] == "COMPLETED"
    flow_run = flow_runs[0]
    tasks = {
        t["name"]: t
        for t in post(ui_server, "task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run["id"]]}}}, home)
    }
    from infra.store import Store

    store = Store(f"sqlite:///{home / 'autoresearch.db'}")
    seeds = [[run.seed for run in r.runs] for r in store.records(store.experiment("uitest").id)]  # random seeds
    train_1 = f"train-1-seed-{seeds[1][0]}"
    assert {
        f"train-0-seed-{seeds[0][0]}",
        f"evaluate-0-seed-{seeds[0][0]}",
        "propose-1",
        train_1,
        f"evaluate-1-seed-{seeds[1][0]}",
        "decide-1",
        "report-1",
    } <= set(tasks), sorted(tasks)
    logs = post(ui_server, "logs/filter", {"logs": {"task_run_id": {"any_": [tasks[train_1]["id"]]}}}, home)
    lines = [log["message"] for log in logs]
    assert any(line.startswith("budget_start:") for line in lines), lines  # the candidate's own output
    assert any(line.startswith("epoch ") for line in lines), lines
    artifacts = {
        a["key"]
        for a in post(ui_server, "artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}}, home)
    }
    assert {"uitest-history", "uitest-progress", "uitest-best", "uitest-strategy", "uitest-progress-plot"} <= artifacts

    page = f"{ui_server.ui_url}/runs/flow-run/{flow_run['id']}"
    browser = DevTools(tmp_path / "chromium-profile")
    try:
        login = browser.open(page, wait_for="password")  # the UI asks for the credentials first
        assert "research-uitest" not in login
        # its login form takes the whole `user:password` line of prefect-credentials and stores it base64-encoded
        password = base64.b64encode(credentials(home).encode()).decode()
        browser.evaluate(f"localStorage.setItem('prefect-password', '{password}')")
        # the page lists the run's log lines, each with its task run's name, a first page of them: decide-1's own
        # lines come after those of every run it measured (the incumbent's again included), so it is checked by the
        # API above, and here the names that lead the page
        dom = browser.open(page, wait_for=train_1)
        assert "research-uitest" in dom
        for name in ("propose-1", train_1):
            assert name in dom, name
        pixels = browser.screenshot(tmp_path / "flow-run.png")
        assert distinct_colours(pixels) > 50
    finally:
        browser.close()

    stopped = cli("ui", "--stop", home=home, env=cli_env(tmp_path))
    assert stopped.returncode == 0 and f"stopped the Prefect server (pid {ui_server.pid}" in stopped.stdout
    assert not prefect_ui.alive(ui_server.pid) and not record_path(home).exists()


def test_foreground_server_stops_on_ctrl_c(tmp_path):
    home = tmp_path / "runs"
    port = free_port()
    env = {**os.environ, **cli_env(tmp_path)}
    env.pop("PREFECT_API_URL", None)
    # its own process group, as a terminal's foreground job; SIGINT handled (a background shell job ignores it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "ui", "--port", str(port), "--home", str(home)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    record = None
    try:
        deadline = time.monotonic() + 200
        while record is None and proc.poll() is None and time.monotonic() < deadline:
            record = read_record(home)
            time.sleep(0.2)
        assert record is not None, proc.communicate(timeout=30)
        assert httpx.get(f"{record.url}/health", timeout=5).status_code == 200
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stdout + stderr
        assert "prefect UI: stopped the Prefect server" in stdout
        assert not prefect_ui.alive(record.pid) and not record_path(home).exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if record is not None and prefect_ui.is_server_process(record):
            prefect_ui.terminate(record.pid)


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = cli("ui", "--background", "--port", str(port), home=tmp_path / "runs", env=cli_env(tmp_path))
    assert done.returncode == 1 and f"port {port} on 127.0.0.1 is in use" in " ".join(done.stderr.split())
    assert not record_path(tmp_path / "runs").exists()


def test_a_stale_record_is_ignored_and_stop_never_signals_a_stranger(tmp_path, capsys):
    home = tmp_path / "runs"
    home.mkdir()
    port = free_port()  # nothing listens there
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        write_record(home, ServerRecord(url=f"http://127.0.0.1:{port}/api", pid=stranger.pid, port=port))
        assert recorded_server(home) is None
        note = capsys.readouterr().err
        assert "ignoring" in note and note.count("\n") == 1  # one line; `run` goes on with its private API
        done = cli("ui", "--stop", home=home, env=cli_env(tmp_path))
        assert done.returncode == 0 and "removed a stale record" in done.stdout
        assert stranger.poll() is None and not record_path(home).exists()  # the PID was not the server: untouched
        record_path(home).write_text("{not json")
        assert cli("ui", "--stop", home=home, env=cli_env(tmp_path)).returncode == 0
    finally:
        stranger.kill()
        stranger.wait()
