"""
The persistent Prefect server with its UI (`autoresearch ui`): started, recorded, stopped.

Prefect's own `prefect server start` runs it, bound to 127.0.0.1, with Prefect's basic authentication:
its credentials are <home>/prefect-credentials (0600, new at every start, deleted when it stops), which every
command of ours sends and the UI asks for once (infra/prefect_server.py). Its PREFECT_HOME (its
database, prefect.db, and the UI's build) is <home>/prefect-ui/ (0700) and its log <home>/prefect-ui.log,
so the runs home holds everything an experiment left behind. The record <home>/prefect-server.json
(infra/prefect_server.py) is how `autoresearch run` finds it, and how `--stop` finds its PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from infra import operator_files
from infra.prefect_server import (
    ServerRecord,
    forget_credentials,
    new_credentials,
    read_record,
    record_path,
    wait_healthy,
    write_record,
)
from infra.sandbox.process_tree import die_with_parent

DEFAULT_PORT = 4200
HOST = "127.0.0.1"  # never another interface: basic authentication over plain HTTP is for loopback only
SERVER_HOME = "prefect-ui"
SERVER_LOG = "prefect-ui.log"
STARTUP_TIMEOUT_S = 120.0  # a cold start migrates a fresh database: 15-20 s on 2 busy cores, more under load
STOP_TIMEOUT_S = 20.0


class ServerError(RuntimeError):
    """The server could not be started or stopped; the message says why."""


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def alive(pid: int) -> bool:
    """Running, not a zombie (a detached server's reaper may be slow to collect it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def is_server_process(record: ServerRecord) -> bool:
    """The recorded PID is still this user's `prefect server start` on the recorded port (PIDs are reused)."""
    try:
        argv = Path(f"/proc/{record.pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        if os.stat(f"/proc/{record.pid}").st_uid != os.geteuid():
            return False
    except OSError:
        return False
    return (
        alive(record.pid)
        and "prefect" in argv
        and argv[argv.index("prefect") + 1 :][:2] == ["server", "start"]
        and "--port" in argv
        and argv[argv.index("--port") + 1 :][:1] == [str(record.port)]
    )


def server_command(port: int) -> list[str]:
    return [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)]


DATABASE_SCHEMES = ("postgresql+asyncpg://", "sqlite+aiosqlite:///")  # what Prefect's server can keep its state in


def check_database_url(url: str) -> None:
    """A Prefect server database URL (Prefect's own setting, PREFECT_API_DATABASE_CONNECTION_URL), or ServerError."""
    if not url.startswith(DATABASE_SCHEMES):
        raise ServerError(
            f"--database-url must start with {' or '.join(DATABASE_SCHEMES)} (Prefect's async drivers), got "
            f"{url.split('://')[0]}://..."
        )


def server_env(home: Path, port: int, auth: str, database_url: str | None = None) -> dict[str, str]:
    """The server's settings: everything under the runs home, bound to loopback, credentials required, no analytics.
    database_url: where the server keeps its state (default: SQLite under the runs home; PostgreSQL for many
    workers)."""
    prefect_home = home / SERVER_HOME
    env = {
        **os.environ,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_API_AUTH_STRING": auth,
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url or f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}",
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "true",
    }
    # a client setting inherited from the caller would point the UI's own requests at another API
    for key in ("PREFECT_API_URL", "PREFECT_UI_API_URL", "PREFECT_UI_URL", "PREFECT_API_AUTH_STRING"):
        env.pop(key, None)
    return env


def start(
    home: Path, port: int, background: bool, database_url: str | None = None
) -> tuple[subprocess.Popen, ServerRecord]:
    """Start the server, wait until it answers, record it. In the foreground it dies with this process;
    in the background it has its own session, so it outlives the terminal."""
    if database_url is not None:
        check_database_url(database_url)
    if port_in_use(port):
        raise ServerError(f"port {port} on {HOST} is in use; choose another with --port")
    operator_files.operator_dir(home / SERVER_HOME)
    auth = new_credentials(home)
    with operator_files.append_to(home / SERVER_LOG) as log:
        proc = subprocess.Popen(
            server_command(port),
            env=server_env(home, port, auth, database_url),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=background,
            preexec_fn=None if background else die_with_parent,
        )
    record = ServerRecord(url=f"http://{HOST}:{port}/api", pid=proc.pid, port=port)
    try:
        wait_healthy(record.url, proc, STARTUP_TIMEOUT_S)
    except RuntimeError as exc:
        terminate(proc.pid)
        raise ServerError(f"{exc}; see {home / SERVER_LOG}") from None
    write_record(home, record)
    return proc, record


def terminate(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM (uvicorn shuts down cleanly on it), then SIGKILL if it is still there after timeout."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.1)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
        while alive(pid):
            _reap(pid)
            time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect our own child (the foreground server); a detached one is someone else's to reap."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(home: Path) -> str:
    """Stop the recorded server and remove its record; say what was done."""
    record = read_record(home)
    if record is None:
        record_path(home).unlink(missing_ok=True)
        return f"no Prefect server recorded in {record_path(home)}"
    if not is_server_process(record):
        record_path(home).unlink(missing_ok=True)
        forget_credentials(home)
        return f"removed a stale record: pid {record.pid} is not the Prefect server on port {record.port}"
    terminate(record.pid)
    record_path(home).unlink(missing_ok=True)
    forget_credentials(home)
    return f"stopped the Prefect server (pid {record.pid}, {record.ui_url})"


def forget(home: Path, record: ServerRecord) -> None:
    """Remove the record if it is still this server's (another `ui` may have replaced it since)."""
    if read_record(home) == record:
        record_path(home).unlink(missing_ok=True)  # unlink removes a link itself, never its target
        forget_credentials(home)


def running(home: Path) -> ServerRecord | None:
    """The recorded server if its process is still the server (no network: --stop and a second `ui` use it)."""
    record = read_record(home)
    return record if record is not None and is_server_process(record) else None
