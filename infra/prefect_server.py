"""
The Prefect API a run talks to, first match wins:

1. PREFECT_API_URL set: use it (with PREFECT_API_AUTH_STRING, if that server wants credentials).
2. The server `autoresearch ui` recorded in <home>/prefect-server.json (infra/prefect_ui.py), if it
   answers GET {url}/health and the socket listening on its port belongs to this user: the run shows
   up in its UI, no variable to export. A stale record is ignored with a one-line note.
3. Otherwise a private API server, as Prefect's own temporary server does, but bound to this
   process's life: the kernel kills it when we die, SIGKILL included (Prefect's would outlive us and
   keep its port and our output pipes). Its log goes to <home>/prefect-server.log.

Every server of ours wants credentials: anyone on the machine can reach 127.0.0.1, and an open API
lets them read the logs, pause a deployment, delete its automations or start a run with other
parameters. Prefect's own basic authentication does it (PREFECT_SERVER_API_AUTH_STRING on the server,
PREFECT_API_AUTH_STRING on its clients): `autoresearch ui` writes its credentials to
<home>/prefect-credentials (0600, new at every start, deleted when it stops), every command of ours sends
them, and the UI asks for them once per browser and per start. A private server gets fresh credentials of its own.

Before anything of ours talks to a recorded server (and sends it the credentials), the listener on its
port must be this user's (/proc/net/tcp): another user who took the port of a server that stopped gets
nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from infra import operator_files
from infra.sandbox.process_tree import die_with_parent

SERVER_RECORD = "prefect-server.json"  # under the runs home: where `autoresearch ui` says its server listens
CREDENTIALS = "prefect-credentials"  # under the runs home: `user:password` of the `autoresearch ui` server
API_USER = "autoresearch"
LISTEN = "0A"  # the TCP_LISTEN state in /proc/net/tcp


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
    """The recorded server, or None if there is no record or it cannot be read (a torn write, a hand edit, a link
    or another user's file at its name)."""
    try:
        return ServerRecord(**json.loads(operator_files.read_text(record_path(home))))
    except (OSError, ValueError, TypeError):
        return None


def write_record(home: Path, record: ServerRecord) -> None:
    """Atomically: a run reading it never sees half a record."""
    operator_files.write_text(record_path(home), json.dumps(asdict(record)) + "\n")


def credentials(home: Path) -> str | None:
    """`user:password` of the running `autoresearch ui` server of this runs home (its 0600 file), or None."""
    try:
        text = operator_files.read_text(Path(home) / CREDENTIALS).strip()
    except FileNotFoundError:
        return None
    return text if text.startswith(f"{API_USER}:") and len(text) > len(API_USER) + 16 else None


def new_credentials(home: Path) -> str:
    """Fresh credentials for a server starting now, written 0600 (any earlier ones are void). Fresh at every start,
    not kept: the UI keeps the password in the browser and sends it to whatever answers on its address later, and
    another user can bind that port once the server has stopped (red team): a password seen that way is void by
    the time a server of ours listens again."""
    text = f"{API_USER}:{secrets.token_urlsafe(32)}"
    operator_files.write_text(Path(home) / CREDENTIALS, text + "\n")
    return text


def forget_credentials(home: Path) -> None:
    (Path(home) / CREDENTIALS).unlink(missing_ok=True)


def listener_uid(port: int, host: str = "127.0.0.1") -> int | None:
    """The uid that owns the socket listening on host:port (IPv4 loopback), or None if nothing listens there."""
    wanted = f"{socket.htonl(int.from_bytes(socket.inet_aton(host), 'big')):08X}:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 7 and fields[3] == LISTEN and fields[1] in (wanted, f"00000000:{port:04X}"):
            return int(fields[7])
    return None


def ours(url: str) -> bool:
    """The socket behind a http://127.0.0.1:PORT/... URL listens for this user."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname == "127.0.0.1" and parts.port is not None and listener_uid(parts.port) == os.geteuid()


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
    """Until the server we started answers on url; another user's process that took the port first is not it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Prefect API server exited with code {proc.returncode}")
        if ours(url) and healthy(url):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the Prefect API server did not become healthy within {timeout:.0f} s")


def recorded_server(home: Path) -> ServerRecord | None:
    """The recorded `autoresearch ui` server if it is this user's and answers; a record that is not gets a one-line
    note."""
    record = read_record(home)
    if record is None:
        return None
    if not ours(record.url):
        print(
            f"prefect: ignoring {record_path(home)}: nothing of yours listens at {record.url} (stale record)",
            file=sys.stderr,
        )
        return None
    if healthy(record.url):
        return record
    print(f"prefect: ignoring {record_path(home)}: no server answers at {record.url} (stale record)", file=sys.stderr)
    return None


def point_prefect_at(url: str, auth: str | None) -> None:
    """This process (and what it starts) talks to url with auth, whether or not prefect was imported already
    (its settings are read at import: they are refreshed here)."""
    os.environ["PREFECT_API_URL"] = url
    if auth:
        os.environ["PREFECT_API_AUTH_STRING"] = auth
    else:
        os.environ.pop("PREFECT_API_AUTH_STRING", None)
    if "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def _drain_background_senders() -> None:
    """Send queued logs and events while the server still listens."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=5)


@contextmanager
def reporting_to(url: str, auth: str | None) -> Iterator[str]:
    """Point this process's Prefect client at url, with credentials; queued logs and events are sent before the
    block ends."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth}):
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
        with reporting_to(record.url, credentials(log_dir)) as url:
            yield url
        return
    import prefect

    operator_files.operator_dir(log_dir)
    # the socket is bound here and handed to uvicorn: a port chosen for it and bound later could be taken in between
    # by another user who read it off uvicorn's command line (red team: every run then failed)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/api"
    auth = f"{API_USER}:{secrets.token_urlsafe(32)}"  # this server's alone, for as long as it lives
    try:
        with operator_files.append_to(log_dir / "prefect-server.log") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--app-dir",
                    str(Path(prefect.__file__).parent.parent),
                    "--factory",
                    "prefect.server.api.server:create_app",
                    "--fd",
                    str(listener.fileno()),
                    "--log-level",
                    "error",
                    "--lifespan",
                    "on",
                ],
                env={
                    **os.environ,
                    "PREFECT_UI_ENABLED": "0",
                    "PREFECT__SERVER_EPHEMERAL": "1",
                    "PREFECT__SERVER_FINAL": "1",
                    "PREFECT_SERVER_API_AUTH_STRING": auth,
                },
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=die_with_parent,
                pass_fds=(listener.fileno(),),
            )
    finally:
        listener.close()  # uvicorn holds its own copy
    try:
        wait_healthy(url, proc, float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))
        with reporting_to(url, auth):
            yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
