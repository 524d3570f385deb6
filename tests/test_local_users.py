"""
Another user of the same machine is an adversary (a shared GPU server is the normal case). A real second,
unprivileged user, made by the test with useradd, tries what the red team did as `nobody`, against a runs
home inside a directory every user can reach: only our own modes, checks and credentials stand in the way.
The operator's commands run with umask 000, so nothing private depends on the caller's umask.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from infra import prefect_ui
from infra.prefect_server import API_USER, CREDENTIALS, ServerRecord, free_port, read_record, write_record
from infra.settings import REPO_ROOT
from tests.conftest import requires_bwrap, requires_real_data

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or not Path("/usr/bin/python3").exists(),
    reason="needs root, useradd and /usr/bin/python3 to make and act as a second user",
)


@pytest.fixture(scope="module")
def intruder():
    """A real unprivileged user of this machine, removed afterwards."""
    name = f"ar-intruder-{os.getpid() % 100000}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def as_intruder(intruder, code: str, timeout: float = 60) -> dict:
    """Run Python (the system's, stdlib only) as the intruder; it prints one JSON object of what it found."""
    done = subprocess.run(
        [
            "setpriv",
            f"--reuid={intruder.pw_uid}",
            f"--regid={intruder.pw_gid}",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            textwrap.dedent(code),
        ],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def shared(tmp_path):
    """A directory every user can enter (as /tmp is): what protects the runs home inside it is ours alone."""
    path = Path(tempfile.mkdtemp(prefix="ar-shared-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def operator(*args: str, home: Path, tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """An autoresearch command of the operator's (root), with umask 000."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "client-prefect")}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_API_AUTH_STRING", None)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args, "--home", str(home)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=lambda: os.umask(0),
    )


OPEN_EACH = """
    import json, os, sys
    found = {}
    for path in sys.argv[1:] if len(sys.argv) > 1 else PATHS:
        try:
            if os.path.isdir(path):
                os.listdir(path)
            else:
                open(path, "rb").read(1)
            found[path] = "read"
        except OSError as exc:
            found[path] = exc.strerror
    print(json.dumps(found))
"""


@requires_real_data
@requires_bwrap
@pytest.mark.process_driven
def test_another_user_can_neither_read_our_files_nor_use_our_prefect_api(intruder, shared, tmp_path):
    home = shared / "runs"
    port = free_port()
    started = operator("ui", "--background", "--port", str(port), home=home, tmp_path=tmp_path, timeout=200)
    assert started.returncode == 0, started.stdout + started.stderr
    record = read_record(home)
    try:
        done = operator(
            "run",
            "--experiment",
            "private",
            "--iterations",
            "0",
            "--budget",
            "1",
            "--repeats",
            "1",
            "--proposer",
            "offline",
            home=home,
            tmp_path=tmp_path,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        # whatever the umask: the home and everything directly in it are the operator's alone
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        for entry in home.iterdir():
            mode = stat.S_IMODE(entry.lstat().st_mode)
            assert mode == (0o700 if entry.is_dir() else 0o600), (entry, oct(mode))
        assert stat.S_IMODE((home / "prefect-ui" / "prefect.db").stat().st_mode) == 0o600
        secrets = [
            home / "autoresearch.db",
            home / CREDENTIALS,
            home / "prefect-ui" / "prefect.db",
            home / "prefect-server.json",
            home / "private" / "train.py",
            home / "prefect-ui.log",
        ]
        found = as_intruder(intruder, f"PATHS = {[str(home), *map(str, secrets)]!r}\n" + textwrap.dedent(OPEN_EACH))
        assert set(found.values()) == {"Permission denied"}, found
        home.chmod(0o755)  # were the home open, the files in it are still 0600
        try:
            found = as_intruder(intruder, f"PATHS = {[str(p) for p in secrets[:4]]!r}\n" + textwrap.dedent(OPEN_EACH))
        finally:
            home.chmod(0o700)
        assert set(found.values()) == {"Permission denied"}, found

        # the API: every call but the health check needs the operator's credentials
        api = record.url
        attempts = {
            "read logs": ("POST", "logs/filter", {}),
            "read artifacts": ("POST", "artifacts/filter", {}),
            "read flow runs and their parameters": ("POST", "flow_runs/filter", {}),
            "list deployments": ("POST", "deployments/filter", {}),
            "list automations": ("POST", "automations/filter", {}),
            "start a run with other parameters": (
                "POST",
                "deployments/00000000-0000-0000-0000-000000000000/create_flow_run",
                {"parameters": {"experiment": "x"}},
            ),
            "pause a deployment": ("POST", "deployments/00000000-0000-0000-0000-000000000000/pause_deployment", {}),
            "delete an automation": ("DELETE", "automations/00000000-0000-0000-0000-000000000000", None),
        }
        found = as_intruder(
            intruder,
            f"""
            import json, urllib.request, urllib.error
            found = {{}}
            for what, (method, path, body) in {attempts!r}.items():
                data = None if body is None else json.dumps(body).encode()
                request = urllib.request.Request("{api}/" + path, data=data, method=method,
                                                 headers={{"Content-Type": "application/json"}})
                try:
                    found[what] = urllib.request.urlopen(request, timeout=20).status
                except urllib.error.HTTPError as exc:
                    found[what] = exc.code
            found["health"] = urllib.request.urlopen("{api}/health", timeout=20).status
            print(json.dumps(found))
        """,
        )
        assert found.pop("health") == 200
        assert found == dict.fromkeys(attempts, 401), found
        auth = (home / CREDENTIALS).read_text().strip()
        assert auth.startswith(f"{API_USER}:")
        with_credentials = httpx.post(f"{api}/flow_runs/filter", json={}, auth=tuple(auth.split(":", 1)), timeout=20)
        assert with_credentials.status_code == 200 and with_credentials.json(), "the operator's own commands do get in"
        # the UI keeps the password in the browser and sends it to whatever answers on its address later: a server
        # started again gets new credentials, and the old ones are void
        stopped = operator("ui", "--stop", home=home, tmp_path=tmp_path)
        assert stopped.returncode == 0 and not (home / CREDENTIALS).exists()
        port = free_port()
        again = operator("ui", "--background", "--port", str(port), home=home, tmp_path=tmp_path, timeout=200)
        assert again.returncode == 0, again.stdout + again.stderr
        record = read_record(home)
        assert (home / CREDENTIALS).read_text().strip() != auth
        old = httpx.post(f"{record.url}/flow_runs/filter", json={}, auth=tuple(auth.split(":", 1)), timeout=20)
        assert old.status_code == 401, "a password of an earlier start still opened the API"
    finally:
        operator("ui", "--stop", home=home, tmp_path=tmp_path)
        if record is not None and prefect_ui.is_server_process(record):
            prefect_ui.terminate(record.pid)


def test_a_runs_home_of_another_user_is_refused_and_its_links_never_followed(intruder, shared, tmp_path):
    """The red team's attack through a deployment's parameters: a home of theirs, full of links into ours."""
    canary = tmp_path / "root-only.txt"
    canary.write_text("precious")
    canary.chmod(0o600)
    made = as_intruder(
        intruder,
        f"""
        import json, os, tempfile
        evil = tempfile.mkdtemp(prefix="ar-evil-", dir="/tmp")
        os.chmod(evil, 0o777)
        os.makedirs(evil + "/night", mode=0o777)
        os.symlink("{canary}", evil + "/night/.lock")
        os.symlink("{tmp_path}/planted.py", evil + "/night/train.py")
        print(json.dumps({{"evil": evil}}))
    """,
    )
    evil = Path(made["evil"])
    try:
        done = operator(
            "run", "--experiment", "night", "--iterations", "0", "--budget", "1", home=evil, tmp_path=tmp_path
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"belongs to uid {intruder.pw_uid}" in " ".join(done.stderr.split())
        assert canary.read_text() == "precious" and not (tmp_path / "planted.py").exists()
        assert sorted(p.name for p in evil.iterdir()) == ["night"]  # nothing written into it
        assert sorted(p.name for p in (evil / "night").iterdir()) == [".lock", "train.py"]
    finally:
        shutil.rmtree(evil, ignore_errors=True)


@pytest.mark.parametrize("plant", ["experiment directory", ".lock", "train.py", "program.md"])
def test_a_link_in_our_own_home_is_refused_never_followed(plant, shared, tmp_path):
    home = shared / "runs"
    home.mkdir(mode=0o700)
    canary = tmp_path / "root-only.txt"
    canary.write_text("precious")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if plant == "experiment directory":
        os.symlink(elsewhere, home / "night")
    else:
        (home / "night").mkdir(mode=0o700)
        os.symlink(canary, home / "night" / plant)
    done = operator(
        "run",
        "--experiment",
        "night",
        "--iterations",
        "0",
        "--budget",
        "1",
        "--proposer",
        "offline",
        home=home,
        tmp_path=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "is a symbolic link; refusing to follow it" in " ".join(done.stderr.split())
    assert canary.read_text() == "precious" and list(elsewhere.iterdir()) == []


def test_a_server_another_user_started_on_our_recorded_port_gets_nothing(intruder, shared, tmp_path):
    """Our server stopped; another user took its port and answers /health. No command of ours talks to it (and so
    never sends it the credentials): the listener on the port is not ours."""
    home = shared / "runs"
    home.mkdir(mode=0o700)
    (home / CREDENTIALS).write_text(f"{API_USER}:{'s' * 43}\n")
    port = free_port()
    theirs = shared / "squatter"
    theirs.mkdir()
    os.chown(theirs, intruder.pw_uid, intruder.pw_gid)
    heard = theirs / "heard.json"
    squatter = subprocess.Popen(
        [
            "setpriv",
            f"--reuid={intruder.pw_uid}",
            f"--regid={intruder.pw_gid}",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            textwrap.dedent(f"""
            import json, http.server
            class Handler(http.server.BaseHTTPRequestHandler):
                def do_GET(self):
                    with open("{heard}", "a") as f:
                        f.write(json.dumps(dict(self.headers)) + "\\n")
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(b"true")
                do_POST = do_GET
            http.server.HTTPServer(("127.0.0.1", {port}), Handler).serve_forever()
         """),
        ],
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        write_record(home, ServerRecord(url=f"http://127.0.0.1:{port}/api", pid=squatter.pid, port=port))
        done = operator("deployments", home=home, tmp_path=tmp_path)
        assert done.returncode == 1 and "nothing of yours listens" in done.stderr, done.stdout + done.stderr
        stopped = operator("ui", "--stop", home=home, tmp_path=tmp_path)
        assert stopped.returncode == 0 and "removed a stale record" in stopped.stdout
        assert squatter.poll() is None  # not ours: never signalled
        assert (
            not heard.exists() or "Authorization" not in heard.read_text() and "authorization" not in heard.read_text()
        )
    finally:
        squatter.kill()
        squatter.wait()


def test_a_report_is_never_written_through_another_users_link(intruder, shared, tmp_path):
    """Found by the red team: `report --out` followed a link another user left in a directory of theirs, and root
    overwrote a root-only file with the page."""
    from infra.store import Store, utcnow

    home = shared / "runs"
    store = Store(f"sqlite:///{home / 'autoresearch.db'}")
    exp = store.ensure_experiment("morning", {"budget_s": 1.0})
    store.put_iteration(
        exp.id,
        0,
        status="ok",
        verdict="baseline",
        hypothesis="baseline",
        val_accuracy=0.8,
        measurements=[0.8],
        finished_at=utcnow(),
    )
    victim = tmp_path / "root-only.conf"
    victim.write_text("precious")
    made = as_intruder(
        intruder,
        f"""
        import json, os, tempfile
        theirs = tempfile.mkdtemp(prefix="ar-reports-", dir="/tmp")
        os.chmod(theirs, 0o1777)
        os.symlink("{victim}", theirs + "/morning.html")
        print(json.dumps({{"dir": theirs}}))
    """,
    )
    theirs = Path(made["dir"])
    try:
        done = operator("report", "morning", "--out", str(theirs / "morning.html"), home=home, tmp_path=tmp_path)
        assert done.returncode == 1 and f"belongs to uid {intruder.pw_uid}" in " ".join(done.stderr.split())
        assert victim.read_text() == "precious"
        mine = tmp_path / "reports"
        mine.mkdir()
        os.symlink(victim, mine / "morning.html")  # a link at the name, even in a directory of ours: replaced
        done = operator("report", "morning", "--out", str(mine / "morning.html"), home=home, tmp_path=tmp_path)
        assert done.returncode == 0, done.stderr
        assert victim.read_text() == "precious" and not (mine / "morning.html").is_symlink()
        assert "<html" in (mine / "morning.html").read_text()
    finally:
        shutil.rmtree(theirs, ignore_errors=True)
