"""
Hostile candidates through the real sandbox (bubblewrap) and the real evaluation process.

Each must end with the right status and a clear reason, within the budget plus
allowances, with nothing left running and nothing outside its run directory changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

import prepare
from infra import process_tree
from infra.sandbox import SandboxJob, run_sandboxed
from infra.settings import PREPARE_PY, REPO_ROOT, Limits
from infra.trial import run_trial
from tests.conftest import requires_bwrap

pytestmark = requires_bwrap

# Small budget; the allowances leave room for torch's import on a loaded 2-core machine.
LIMITS = Limits(budget_s=2, startup_allowance_s=20, grace_s=2, memory_cap_bytes=6 * 2**30, eval_timeout_s=60)
# Generous bound on the whole trial: hard limit + evaluation start-up.
WALL_BOUND_S = LIMITS.hard_limit_s + 30

HEADER = "from prepare import TrainingBudget, load_split, save_model\nimport torch\nfrom torch import nn\n"


def trial(tmp_path: Path, body: str, limits: Limits = LIMITS, header: str = HEADER):
    code = header + textwrap.dedent(body)
    return run_trial(code, tmp_path / "run", limits, val=prepare.load_split_uint8("val"))


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return [pid for pid in found if process_tree.alive(pid)]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def _data(synthetic_data):
    return synthetic_data


def test_honest_baseline_is_ok_on_learnable_data(tmp_path):
    result = trial(tmp_path, "", header=(REPO_ROOT / "baseline" / "train.py").read_text())
    assert result.status == "ok", result.reason
    assert result.val_accuracy > 0.9
    assert result.epochs >= 1 and result.train_seconds is not None
    assert result.isolated


def test_syntax_error_is_invalid_and_never_runs(tmp_path):
    result = trial(tmp_path, "def broken(:\n    pass\n")
    assert result.status == "invalid"
    assert "syntax error at line 4" in result.reason
    assert result.exit_code is None and result.wall_seconds < 5


def test_exception_mid_training_is_crashed_with_its_error(tmp_path):
    result = trial(tmp_path, """
        budget = TrainingBudget()
        for epoch in range(3):
            print(f"epoch {epoch}", flush=True)
            if epoch == 2:
                raise ZeroDivisionError("division by zero in epoch 2")
    """)
    assert result.status == "crashed"
    assert "ZeroDivisionError: division by zero in epoch 2" in result.reason
    assert result.exit_code == 1


def test_nan_loss_model_is_invalid(tmp_path):
    result = trial(tmp_path, """
        budget = TrainingBudget()
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        with torch.no_grad():
            model[1].weight.fill_(float("nan"))  # what lr=1e10 does after a few steps
        print("loss: nan", flush=True)
        save_model(model)
    """)
    assert result.status == "invalid"
    assert "NaN or infinity" in result.reason


def test_budget_ignoring_sigterm_catching_loop_is_killed(tmp_path):
    marker = f"sleep-{uuid.uuid4().hex[:8]}"
    result = trial(tmp_path, f"""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        budget = TrainingBudget()
        while True:  # never asks the budget, never stops
            time.sleep(0.05)
        # {marker}
    """)
    assert result.status == "timeout"
    assert "SIGKILL" in result.reason
    assert result.signal == 9
    # killed at budget + grace after the marker, well inside the hard limit
    assert result.train_seconds == pytest.approx(LIMITS.budget_s + LIMITS.grace_s, abs=1.5)
    assert result.wall_seconds < WALL_BOUND_S


def test_no_budget_marker_still_killed_at_hard_limit(tmp_path):
    limits = Limits(budget_s=1, startup_allowance_s=2, grace_s=1, memory_cap_bytes=2**30)
    started = time.monotonic()
    result = trial(tmp_path, "while True:\n    pass\n", limits=limits, header="")
    assert result.status == "timeout"
    assert time.monotonic() - started < limits.hard_limit_s + 3


def _setsid_body(marker: str) -> str:
    return f"""
        import os, subprocess, time
        # a setsid'ed child, and a double-forked grandchild, both meant to outlive the run
        subprocess.Popen(["sleep", "{marker}"], start_new_session=True)
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execvp("sleep", ["sleep", "{marker}"])
            os._exit(0)
        time.sleep(0.5)
        print("parent exits, children live on", flush=True)
    """


@pytest.mark.parametrize("sandbox_mode", ["auto", "none"])
def test_setsid_children_do_not_outlive_the_run(tmp_path, monkeypatch, sandbox_mode):
    monkeypatch.setenv("AUTORESEARCH_SANDBOX", sandbox_mode)
    marker = f"{1000 + int(uuid.uuid4().int % 1000)}.{uuid.uuid4().int % 10**6:06d}"
    result = trial(tmp_path, _setsid_body(marker), header="")
    assert result.status == "invalid" and "no model saved" in result.reason
    assert result.isolated == (sandbox_mode == "auto")
    assert processes_with(marker) == [], "a child of the candidate is still running"


def test_fake_printed_accuracy_is_never_the_metric(tmp_path):
    result = trial(tmp_path, """
        budget = TrainingBudget()
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()  # untrained: every prediction is class 0
        print("val_accuracy: 0.9990", flush=True)
        print("accuracy: 99.9%", flush=True)
        save_model(model)
    """)
    _, labels = prepare.load_split_uint8("val")
    assert result.status == "ok"
    assert result.val_accuracy == pytest.approx((labels == 0).float().mean().item())
    assert result.val_accuracy < 0.3


def test_validation_and_test_data_are_unreachable(tmp_path):
    home_cache = Path.home() / ".cache" / "autoresearch" / "FashionMNIST" / "raw"
    targets = [
        str(prepare.DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz"),
        "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz",
        str(home_cache / "t10k-labels-idx1-ubyte"),
        str(prepare.cache_dir() / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte"),
        os.environ["AUTORESEARCH_DATA_DIR"] + "/t10k-labels-idx1-ubyte.gz",
        str(REPO_ROOT / "prepare.py"),
    ]
    result = trial(tmp_path, f"""
        import json
        readable = []
        for path in {targets!r}:
            try:
                open(path, "rb").read(1)
                readable.append(path)
            except OSError:
                pass
        json.dump(readable, open("readable.json", "w"))
        load_split("val")
    """)
    assert json.loads((tmp_path / "run" / "readable.json").read_text()) == []
    assert result.status == "crashed"
    assert "PermissionError" in result.reason and "'val' split is not available" in result.reason


def test_writes_to_prepare_or_outside_the_run_dir_fail(tmp_path):
    outside_tmp = tmp_path / "outside.txt"  # the sandbox's /tmp is private scratch: writes land there
    outside_home = Path.home() / f".autoresearch-probe-{uuid.uuid4().hex[:8]}"  # not mounted at all
    for path in (outside_tmp, outside_home):
        path.write_text("original")
    repo_prepare_hash = sha(PREPARE_PY)
    targets = ["prepare.py", str(PREPARE_PY), str(outside_home), "/usr/evil.txt", "/etc/evil.txt", "/evil.txt"]
    try:
        result = trial(tmp_path, f"""
            import json
            written = []
            for path in {targets!r}:
                try:
                    with open(path, "a") as f:
                        f.write("pwned")
                    written.append(path)
                except OSError:
                    pass
            open({str(outside_tmp)!r}, "a").write("pwned")
            json.dump(written, open("written.json", "w"))
            open("prepare.py", "w").write("pwned")
        """)
        assert result.status == "crashed"
        assert "Read-only file system" in result.reason or "Permission denied" in result.reason
        # a path under /tmp (a checkout in /tmp, say) is written in the sandbox's private /tmp
        # only; the host-side checks below are what matters there
        private = [t for t in targets if t.startswith("/tmp/")]
        written = json.loads((tmp_path / "run" / "written.json").read_text())
        assert [w for w in written if w not in private] == []
        assert outside_tmp.read_text() == "original" and outside_home.read_text() == "original"
    finally:
        outside_home.unlink()
    assert sha(PREPARE_PY) == repo_prepare_hash
    assert sha(tmp_path / "run" / "prepare.py") == repo_prepare_hash
    assert not any(Path(p).exists() for p in ("/usr/evil.txt", "/etc/evil.txt", "/evil.txt"))


def test_network_connections_are_blocked(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []
    stop = threading.Event()

    def accept_loop():
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except OSError:
                pass

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        result = trial(tmp_path, f"""
            import socket
            socket.create_connection(("127.0.0.1", {port}), timeout=3).sendall(b"leak")
        """, header="")
    finally:
        stop.set()
        thread.join()
        server.close()
    assert accepted == []
    assert result.status == "crashed"
    assert "ConnectionRefusedError" in result.reason or "unreachable" in result.reason


def test_memory_past_the_cap_is_crashed_with_reason(tmp_path):
    limits = Limits(budget_s=2, startup_allowance_s=20, grace_s=2, memory_cap_bytes=2**30)
    result = trial(tmp_path, "block = bytearray(3 * 2**30)\n", limits=limits, header="")
    assert result.status == "crashed"
    assert "exceeded the memory cap of 1.00 GiB" in result.reason


def test_watchdog_kills_on_tree_rss_without_rlimit(tmp_path):
    """The CUDA path: no RLIMIT_AS, so the watchdog's process-tree RSS check must catch it."""
    workdir = tmp_path / "job"
    workdir.mkdir()
    grow = "import time\nhold = []\nwhile True:\n    hold.append(b'x' * 50_000_000)\n    time.sleep(0.05)\n"
    outcome = run_sandboxed(SandboxJob(
        argv=[os.sys.executable, "-c", grow], workdir=workdir, log_path=workdir / "log",
        startup_allowance_s=30, budget_s=0, grace_s=0, memory_cap_bytes=512 * 2**20, cap_address_space=False,
    ))
    assert outcome.killed_for == "memory"
    assert 512 * 2**20 < outcome.peak_rss_bytes < 2 * 2**30
    assert outcome.wall_seconds < 20


def test_never_saving_a_model_is_invalid(tmp_path):
    result = trial(tmp_path, """
        budget = TrainingBudget()
        print("epoch 1 done", flush=True)
        budget.report()
    """)
    assert result.status == "invalid"
    assert "no model saved" in result.reason and "save_model" in result.reason
    assert result.epochs == 0


def test_wrong_output_shape_is_invalid(tmp_path):
    result = trial(tmp_path, """
        save_model(nn.Sequential(nn.Flatten(), nn.Linear(784, 5)))
    """)
    assert result.status == "invalid"
    assert "wrong output shape (100, 5): expected (100, 10)" in result.reason


def test_malformed_artifact_is_invalid(tmp_path):
    result = trial(tmp_path, """
        open("model.pt2", "wb").write(b"definitely not an exported program")
    """)
    assert result.status == "invalid"
    assert "could not load model artifact" in result.reason
