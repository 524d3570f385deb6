"""
The sandbox: run one command in a fresh directory with only what it needs.

With bubblewrap (Debian `bubblewrap`): no network (private loopback only), its own
PID namespace (killing it ends every descendant, setsid'ed or double-forked), a
read-only view of the system and the Python environment, a private /tmp, the run
directory as the only writable place, and the data files hidden. Only the files
named in the job are mounted in.

Without bubblewrap the command runs as a plain subprocess in its own session;
a warning says once that isolation is weaker. The kill logic (infra/watchdog.py)
and the memory cap apply either way.

Memory: RLIMIT_AS caps the address space on CPU runs (CUDA reserves huge virtual
ranges, so it is skipped there); the watchdog's tree-RSS check covers every run.
"""

from __future__ import annotations

import contextvars
import functools
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from infra import process_tree
from infra.watchdog import Watchdog

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
POLL_S = 0.1
SANDBOX_ENV = "AUTORESEARCH_SANDBOX"  # auto (default), bwrap, or none


@dataclass
class SandboxJob:
    argv: list[str]
    workdir: Path
    log_path: Path
    startup_allowance_s: float
    budget_s: float
    grace_s: float
    memory_cap_bytes: int
    env: dict[str, str] = field(default_factory=dict)
    ro_paths: list[Path] = field(default_factory=list)  # mounted read-only at the same path inside
    hidden: list[Path] = field(default_factory=list)  # host paths to hide even if under a system dir
    cap_address_space: bool = True
    gpu: bool = False


@dataclass
class SandboxOutcome:
    exit_code: int | None  # the process's exit status, None if killed by a signal
    signal: int | None
    killed_for: str | None  # 'timeout' or 'memory' when the watchdog killed it
    wall_seconds: float
    training_seconds: float | None
    peak_rss_bytes: int
    log_path: Path
    isolated: bool


def bwrap_path() -> str | None:
    mode = os.environ.get(SANDBOX_ENV, "auto")
    if mode not in ("auto", "bwrap", "none"):
        raise ValueError(f"{SANDBOX_ENV} must be auto, bwrap or none, got {mode!r}")
    if mode == "none":
        return None
    found = shutil.which("bwrap")
    if found is None and mode == "bwrap":
        raise RuntimeError(f"{SANDBOX_ENV}=bwrap but bubblewrap is not installed (apt-get install bubblewrap)")
    return found


@functools.cache
def warn_unisolated() -> None:
    print(
        "WARNING: bubblewrap (bwrap) is not available: candidates run as plain subprocesses, "
        "with network access and the filesystem visible. Install Debian's `bubblewrap` for isolation.",
        file=sys.stderr,
        flush=True,
    )


def _python_roots() -> list[Path]:
    roots = {Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent.parent}
    return sorted(r for r in roots if r.exists())


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def bwrap_argv(bwrap: str, job: SandboxJob) -> list[str]:
    args = [bwrap, "--die-with-parent", "--new-session", "--unshare-all",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    bound: list[Path] = []
    for d in SYSTEM_DIRS:
        p = Path(d)
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), d]
        elif p.is_dir():
            args += ["--ro-bind", d, d]
            bound.append(p)
    for root in _python_roots():
        args += ["--ro-bind", str(root), str(root)]
        bound.append(root)
    for hidden in job.hidden:
        hidden = hidden.resolve()
        if hidden.is_dir() and _under(hidden, bound):
            args += ["--tmpfs", str(hidden)]
    if job.gpu:  # CUDA needs its device nodes and sysfs
        args += ["--ro-bind", "/sys", "/sys"]
        for dev in sorted(Path("/dev").glob("nvidia*")):
            args += ["--dev-bind", str(dev), str(dev)]
    args += ["--bind", str(job.workdir), str(job.workdir)]
    for path in job.ro_paths:
        args += ["--ro-bind", str(path), str(path)]
    # bwrap's root is a tmpfs holding the mount points; make it read-only too, so that
    # only the run directory and the private /tmp can be written.
    args += ["--remount-ro", "/", "--chdir", str(job.workdir)]
    return args


def _child_setup(cap: int | None) -> Callable[[], None]:
    """Runs in the child before exec: die with the orchestrator, and cap the address space on CPU runs."""
    def apply() -> None:
        process_tree.die_with_parent()
        if cap:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return apply


def _base_env(job: SandboxJob, token: str) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "AUTORESEARCH_RUN_TOKEN": token,  # lets cleanup find strays that left the tree
    }
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "CUDA_VISIBLE_DEVICES"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(job.env)
    return env


def _stream(pipe, log_path: Path, watchdog: Watchdog, on_line: Callable[[str], None] | None) -> None:
    with open(log_path, "a", encoding="utf-8") as log:
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            watchdog.saw_line(line, time.monotonic())
            log.write(line + "\n")
            log.flush()
            if on_line is not None:
                on_line(line)


def _kill_everything(proc: subprocess.Popen, token: str) -> None:
    """SIGKILL the process group, the tree below it, and anything still carrying the run token."""
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
    process_tree.kill_all(process_tree.descendants(proc.pid))
    process_tree.kill_all(process_tree.pids_with_env(token))


def run_sandboxed(job: SandboxJob, on_line: Callable[[str], None] | None = None) -> SandboxOutcome:
    """Run job to completion or until the watchdog kills it. Nothing it started is left running."""
    bwrap = bwrap_path()
    if bwrap is None:
        warn_unisolated()
    argv = (bwrap_argv(bwrap, job) if bwrap else []) + job.argv
    token = uuid.uuid4().hex
    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    job.log_path.touch()
    launched = time.monotonic()
    watchdog = Watchdog(launched, job.startup_allowance_s, job.budget_s, job.grace_s, job.memory_cap_bytes)
    proc = subprocess.Popen(
        argv,
        cwd=job.workdir,
        env=_base_env(job, token),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_child_setup(job.memory_cap_bytes if job.cap_address_space else None),
    )
    # the caller's context (Prefect's run and settings) must reach on_line in the reader thread
    context = contextvars.copy_context()
    reader = threading.Thread(target=context.run, args=(_stream, proc.stdout, job.log_path, watchdog, on_line), daemon=True)
    reader.start()
    killed_for = None
    try:
        while proc.poll() is None:
            rss = process_tree.rss_bytes(process_tree.descendants(proc.pid))
            killed_for = watchdog.verdict(time.monotonic(), rss)
            if killed_for:
                break
            time.sleep(POLL_S)
    finally:
        _kill_everything(proc, token)
        proc.wait()
        ended = time.monotonic()
        reader.join(timeout=10)
    rc = proc.returncode
    return SandboxOutcome(
        exit_code=rc if rc >= 0 else None,
        signal=-rc if rc < 0 else None,
        killed_for=killed_for,
        wall_seconds=ended - launched,
        training_seconds=watchdog.training_seconds(ended),
        peak_rss_bytes=watchdog.peak_rss_bytes,
        log_path=job.log_path,
        isolated=bwrap is not None,
    )
