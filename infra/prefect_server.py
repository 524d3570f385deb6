"""
The Prefect API a run talks to, first match wins:

1. PREFECT_API_URL set: use it.
2. The server `autoresearch ui` recorded in <home>/prefect-server.json (infra/prefect_ui.py), if it
   answers GET {url}/health: the run shows up in its UI, no variable to export. A stale record is
   ignored with a one-line note.
3. Otherwise a private API server, as Prefect's own temporary server does, but bound to this
   process's life: the kernel kills it when we die, SIGKILL included (Prefect's would outlive us and
   keep its port and our output pipes). Its log goes to <home>/prefect-server.log.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from infra.sandbox.process_tree import die_with_parent

SERVER_RECORD = "prefect-server.json"  # under the runs home: where `autoresearch ui` says its server listens


@dataclass(frozen=True)
class ServerRecord:
    """A persistent server started by `autoresearch ui`."""

    url: str  # the API, http://127.0.0.1:PORT/api; the UI is the same address without /api
    pid: int  # the `prefect server start` process
    port: int

    @property
    def ui_url(self) -> str:
        return self.url.removesuffix("/api")


def record_path(home: Path) -> Path:
    return Path(home) / SERVER_RECORD


def read_record(home: Path) -> ServerRecord | None:
    """The recorded server, or None if there is no record or it cannot be read (a torn write, a hand edit)."""
    try:
        return ServerRecord(**json.loads(record_path(home).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_record(home: Path, record: ServerRecord) -> None:
    """Atomically: a run reading it never sees half a record."""
    path = record_path(home)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(asdict(record)) + "\n")
    partial.replace(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether a Prefect API answers GET {url}/health."""
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Prefect API server exited with code {proc.returncode}")
        if healthy(url):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the Prefect API server did not become healthy within {timeout:.0f} s")


def recorded_server(home: Path) -> ServerRecord | None:
    """The recorded `autoresearch ui` server if it answers; a record that does not gets a one-line note."""
    record = read_record(home)
    if record is None:
        return None
    if healthy(record.url):
        return record
    print(f"prefect: ignoring {record_path(home)}: no server answers at {record.url} (stale record)", file=sys.stderr)
    return None


def _drain_background_senders() -> None:
    """Send queued logs and events while the server still listens."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=5)


@contextmanager
def reporting_to(url: str) -> Iterator[str]:
    """Point this process's Prefect client at url; queued logs and events are sent before the block ends."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        try:
            yield url
        finally:
            _drain_background_senders()


@contextmanager
def prefect_api(log_dir: Path) -> Iterator[str]:
    """Yield the API URL in use (see the module's docstring); a private server lives exactly as long as the block.
    log_dir: the runs home (the server record and the private server's log)."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    record = recorded_server(log_dir)
    if record is not None:
        with reporting_to(record.url) as url:
            yield url
        return
    import prefect

    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    with open(log_dir / "prefect-server.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent),
             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"},
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=die_with_parent,
        )
    try:
        wait_healthy(url, proc, float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))
        with reporting_to(url):
            yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
