"""
The sandbox: run one command with only what it needs, as a user that owns nothing.

With bubblewrap (Debian `bubblewrap`):
- identity: an unprivileged host uid with no capabilities, no setuid, no nested user namespaces
  (infra/sandbox/identity.py); nothing it can see is writable but its own directory;
- namespaces: no network (private loopback only), its own PID namespace (killing it ends every
  descendant, setsid'ed or double-forked), its own IPC namespace without SysV shared memory;
- system calls: sockets other than AF_UNIX, fallocate, io_uring and a few more refused
  (infra/sandbox/syscall_filter.py);
- filesystem: the system and the Python environment read-only, the root read-only, the data hidden,
  only the files named in the job mounted (read-only) and one writable directory; a private /tmp and
  /dev/shm whose use counts against the memory cap;
- time: on a CPU, CPU time of everything the run ever started (the kernel's cgroup count where one can
  be made, infra/sandbox/cpu_cgroup.py, else a /proc sum); on a GPU, wall time (infra/sandbox/watchdog.py);
- limits: a memory cgroup at the memory cap where one can be made (infra/sandbox/memory_cgroup.py), RLIMIT_AS
  on CPU runs, at most MAX_TASKS processes and threads and MAX_OPEN_FILES open files each, no file
  larger than the disk cap, no core dumps; the watchdog (infra/sandbox/watchdog.py) enforces memory and disk
  from outside at every poll, and a timer thread of its own kills at deadline + export allowance;
- output: read through infra/sandbox/output_capture.py (bounded lines, bounded log, bounded memory); the
  run's clock is read the moment the job's marker line arrives, so the part after it (training, inference)
  is measured from outside.

Without bubblewrap the command runs as a plain subprocess in its own session; a warning says once
that isolation is weaker. The kill logic, limits and output bounds apply either way.
"""

from __future__ import annotations

import contextvars
import ctypes
import errno
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

import prepare
from infra.sandbox import identity as sandbox_identity
from infra.sandbox import process_tree, syscall_filter
from infra.sandbox.compute_record import ComputeRecord, compute_record, host_load
from infra.sandbox.cpu_cgroup import CpuCgroup
from infra.sandbox.cpuset_cgroup import CpusetCgroup
from infra.sandbox.memory_cgroup import MemoryCgroup
from infra.sandbox.output_capture import BoundedLog
from infra.sandbox.safe_files import tree_usage
from infra.sandbox.slots import Slot
from infra.sandbox.watchdog import Watchdog
from infra.settings import Limits

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
PRIVATE_TMPFS = ("/tmp", "/dev/shm")
POLL_S = 0.25
SANDBOX_ENV = "AUTORESEARCH_SANDBOX"  # auto (default), bwrap, or none
MAX_TASKS = 1024  # processes and threads of the sandbox user (RLIMIT_NPROC; root orchestrator only)
MAX_OPEN_FILES = 4096  # per process (RLIMIT_NOFILE; also bounds file descriptors in flight over sockets)
MAX_OPEN_FILES_SCANNED = 65_536  # a run holding more open files than the watchdog can account for is killed
DISK_SLACK_BYTES = 2**30  # free space the work directory's filesystem may lose beyond the disk cap


@dataclass
class SandboxJob:
    argv: list[str]
    workdir: Path  # the only writable directory: created by the caller, given to the sandbox user
    log_path: Path  # written by the orchestrator from the process's output; never inside workdir
    limits: Limits  # the timing (budget, start-up and export allowances) and the memory and disk caps
    env: dict[str, str] = field(default_factory=dict)
    deadline_env: str | None = None  # if set, the deadline (time.monotonic()) is passed in this variable
    ro_paths: list[Path] = field(default_factory=list)  # mounted read-only at the same path inside
    hidden: list[Path] = field(default_factory=list)  # host paths to hide even if under a system dir
    cap_address_space: bool = True
    gpu: bool = False
    cpu_clock: bool = (
        False  # the budget is CPU time of limits.cpu_threads cores (else the wall clock: infra/sandbox/watchdog.py)
    )
    marker: str = (
        prepare.BUDGET_MARKER
    )  # the output line that starts the measured part (training; an evaluation's inference)
    slot: Slot | None = None  # the measurement slot it runs in: its cores (and GPU); None: the whole machine

    @property
    def cpu_threads(self) -> int:
        """The allotted cores of a CPU-clock run; 0 on the wall clock."""
        return self.limits.cpu_threads if self.cpu_clock else 0


@dataclass
class SandboxOutcome:
    exit_code: int | None  # the process's exit status, None if killed by a signal
    signal: int | None
    killed_for: str | None  # 'timeout', 'memory', 'disk' or 'open files' when it was killed
    wall_seconds: float
    training_seconds: float  # in budget units: wall seconds, or CPU seconds per allotted core
    marker_at_s: float | None  # the run's clock (CPU s of the tree, or wall s since launch) at its marker; None: none
    after_marker_s: float | None  # the run's clock from its marker to its end, in total (not per core); None: no marker
    compute: ComputeRecord
    cpu_limit_s: float | None  # CPU clock: the CPU seconds after which it is SIGKILLed (None on a wall clock)
    stopped_by_wall_ceiling: bool  # CPU clock: killed at the wall ceiling, not for its CPU time
    peak_rss_bytes: int  # peak memory the watchdog saw: RSS of the tree + private tmpfs + unlinked open files
    peak_disk_bytes: int
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
    return sorted(r.resolve() for r in roots if r.exists())


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def _parent_dirs(paths: list[Path]) -> list[str]:
    """Every ancestor of the mount points, created 0755 up front (bubblewrap 0.8 would make them 0700,
    which the unprivileged sandbox user could not traverse)."""
    parents = {str(a) for p in paths for a in p.parents if str(a) != "/"}
    return sorted(parents, key=lambda p: (p.count("/"), p))


def bwrap_argv(bwrap: str, job: SandboxJob, userns_fd: int | None, seccomp_fd: int | None = None) -> list[str]:
    if userns_fd is not None:  # root: our own user namespace (see infra/sandbox/identity.py)
        identity = ["--userns", str(userns_fd)]
        namespaces = [
            "--unshare-pid",
            "--unshare-net",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ]  # IPC: made before exec
    else:
        identity = [
            "--unshare-user",
            "--uid",
            str(sandbox_identity.INSIDE_UID),
            "--gid",
            str(sandbox_identity.INSIDE_UID),
            "--cap-drop",
            "ALL",
            "--disable-userns",
        ]
        namespaces = ["--unshare-all"]
    args = [bwrap, *identity, *namespaces, "--die-with-parent", "--new-session", "--proc", "/proc", "--dev", "/dev"]
    if seccomp_fd is not None:  # infra/sandbox/syscall_filter.py
        args += ["--seccomp", str(seccomp_fd)]
    for mount in PRIVATE_TMPFS:  # bounded; the watchdog counts their use as memory
        args += ["--perms", "1777", "--size", str(job.limits.memory_cap_bytes), "--tmpfs", mount]
    bound: list[Path] = []
    binds: list[str] = []
    for d in SYSTEM_DIRS:
        p = Path(d)
        if p.is_symlink():
            binds += ["--symlink", os.readlink(p), d]
        elif p.is_dir():
            binds += ["--ro-bind", d, d]
            bound.append(p)
    for root in _python_roots():
        binds += ["--ro-bind", str(root), str(root)]
        bound.append(root)
    for hidden in job.hidden:
        hidden = hidden.resolve()
        if hidden.is_dir() and _under(hidden, bound):
            binds += ["--tmpfs", str(hidden)]
    if job.gpu:  # CUDA needs its device nodes and sysfs
        binds += ["--ro-bind", "/sys", "/sys"]
        for dev in gpu_device_nodes(job.slot, sorted(Path("/dev").glob("nvidia*"))):
            binds += ["--dev-bind", str(dev), str(dev)]
    binds += ["--bind", str(job.workdir), str(job.workdir)]
    for path in job.ro_paths:
        binds += ["--ro-bind", str(path), str(path)]
    mount_points = [*bound, job.workdir, *job.ro_paths]
    for parent in _parent_dirs(mount_points):
        args += ["--dir", parent]
    # bwrap's root is a tmpfs holding the mount points; read-only too, so only the workdir and the
    # private tmpfs mounts can be written
    args += [*binds, "--remount-ro", "/", "--chdir", str(job.workdir)]
    if userns_fd is not None:
        args += sandbox_identity.drop_to_sandbox_user()
    return args


def gpu_device_nodes(slot: Slot | None, nodes: list[Path]) -> list[Path]:
    """The /dev/nvidia* nodes a GPU job binds: all of them, or for a GPU slot only its own GPU's (/dev/nvidiaN, N
    its minor number) beside the driver's shared ones (nvidiactl, nvidia-uvm, nvidia-modeset, nvidia-caps)."""
    if slot is None or slot.gpu is None:
        return nodes
    return [n for n in nodes if not n.name[len("nvidia") :].isdigit() or n.name == f"nvidia{slot.gpu.minor}"]


KEYCTL_JOIN_SESSION_KEYRING = 1


def _session_keyring_joiner() -> Callable[[], None]:
    """A function for the child before exec: join a fresh, empty session keyring. An orchestrator started
    from an ssh login, a systemd service or a container runtime has a session keyring, and keys in it are
    reached by possession, whatever the uid: inherited, it let a candidate read a root-only key (red team).
    The syscall filter refuses the key calls too; this holds where there is none. Looked up here, in the
    parent: loading a library after fork could wait for a lock another thread held."""
    number = syscall_filter.number("keyctl")
    if number is None:
        return lambda: None
    syscall = ctypes.CDLL(None, use_errno=True).syscall

    def join() -> None:
        if syscall(ctypes.c_long(number), ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING), None) < 0:
            code = ctypes.get_errno()
            if code != errno.ENOSYS:  # ENOSYS: a kernel without keys, so none to inherit
                raise OSError(code, f"cannot give the sandbox a session keyring of its own: {os.strerror(code)}")

    return join


def _child_setup(
    job: SandboxJob,
    private_ipc: bool,
    cgroup: MemoryCgroup | None,
    cpu_group: CpuCgroup | None,
    cpuset: CpusetCgroup | None,
) -> Callable[[], None]:
    """Runs in the child before exec: die with the orchestrator, a session keyring of its own, join the
    cgroups, its slot's cores, private IPC, limits."""
    join_session_keyring = _session_keyring_joiner()

    def apply() -> None:
        process_tree.die_with_parent()
        join_session_keyring()
        os.umask(0o022)
        if cgroup is not None:
            cgroup.enter()
        if cpu_group is not None:
            cpu_group.enter()
        if cpuset is not None:
            cpuset.enter()
        if job.slot is not None:  # inherited by everything it starts; the syscall filter keeps it from changing it
            os.sched_setaffinity(0, job.slot.cores)
        if private_ipc:
            sandbox_identity.private_ipc_without_shared_memory()
        if job.cpu_threads:  # a batch job to the scheduler: longer slices when it shares a core, less cache lost
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        if job.cap_address_space:
            resource.setrlimit(resource.RLIMIT_AS, (job.limits.memory_cap_bytes, job.limits.memory_cap_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (job.limits.disk_cap_bytes, job.limits.disk_cap_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (MAX_OPEN_FILES, MAX_OPEN_FILES))
        if private_ipc:  # root: counted per sandbox user namespace (a user's limit would count all its processes)
            resource.setrlimit(resource.RLIMIT_NPROC, (MAX_TASKS, MAX_TASKS))

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
    if job.cpu_threads:  # the allotted cores; waiting threads sleep instead of spinning on the CPU budget
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", prepare.CPU_THREADS_ENV):
            env[key] = str(job.cpu_threads)
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if job.gpu and job.slot is not None and job.slot.gpu is not None:  # its one GPU, by UUID: cuda:0 inside
        env["CUDA_VISIBLE_DEVICES"] = job.slot.gpu.uuid
    env.update(job.env)
    return env


def _stream(pipe, log: BoundedLog, watchdog: Watchdog, read_cpu: Callable[[], float]) -> None:
    """Read the output; at the marker line read the run's CPU time at once (a reader thread wakes within
    milliseconds of a line, a poll up to POLL_S later: what follows the marker is measured to that precision)."""

    def saw(line: str) -> None:
        if watchdog.saw_line(line, time.monotonic()) and watchdog.cpu_clock:
            watchdog.saw_marker_cpu(read_cpu())

    log.consume(pipe, saw)


class _Killer:
    """Kills the whole run, from any thread, once or many times; remembers the first reason. The process
    is not reaped until the very end (see _wait_for_exit), so its pid can never name a stranger."""

    def __init__(self, proc: subprocess.Popen, token: str, cgroup: MemoryCgroup | None, exited: threading.Event):
        self.proc, self.token, self.cgroup, self.exited = proc, token, cgroup, exited
        self.reason: str | None = None
        self.doomed: set[int] = set()
        self.lock = threading.Lock()

    def kill(self, reason: str | None = None) -> None:
        with self.lock:
            if reason and self.reason is None and not self.exited.is_set():
                self.reason = reason
            tree = set(process_tree.descendants(self.proc.pid))  # before the group dies: its children reparent
            listed = tree | set(self.cgroup.pids() if self.cgroup else []) | set(process_tree.pids_with_env(self.token))
            try:
                os.killpg(self.proc.pid, 9)  # safe: the leader is not reaped yet, so its group id is still ours
            except (ProcessLookupError, PermissionError):
                pass
            process_tree.kill_verified(listed - {self.proc.pid}, self._belongs(tree))
            self.doomed.update(listed)

    def _belongs(self, tree: set[int]) -> Callable[[int], bool]:
        """Whether a pid (read again after it was pinned) is still a process of this run."""

        def check(pid: int) -> bool:
            return (
                (self.cgroup is not None and self.cgroup.contains(pid))
                or process_tree.has_env(pid, self.token)
                or process_tree.parent(pid) in tree
            )

        return check

    def sweep(self) -> None:
        """After the exit: kill anything left of the run, and wait (a few seconds at most) until it is gone."""
        self.kill()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            any(process_tree.alive(pid) for pid in self.doomed - {self.proc.pid})
            or (self.cgroup is not None and self.cgroup.pids())
        ):
            self.kill()
            time.sleep(0.02)


def _wait_for_exit(pid: int, exited: threading.Event, exited_at: list[float]) -> None:
    """Note when the process exits, without reaping it (WNOWAIT)."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    exited_at.append(time.monotonic())
    exited.set()


def _cpu_seconds(pids: list[int], cpu_group: CpuCgroup | None) -> float:
    """The run's CPU time: the kernel's count where there is a group (it keeps the time of children
    nobody waited for), and never less than the /proc sum."""
    return max(process_tree.cpu_seconds(pids), cpu_group.seconds() if cpu_group else 0.0)


def _resource_verdict(
    pids: list[int],
    job: SandboxJob,
    watchdog: Watchdog,
    isolated: bool,
    free_at_launch: int,
    cgroup: MemoryCgroup | None,
    cpu_group: CpuCgroup | None,
) -> str | None:
    """Time, memory and disk, measured from outside, each at a bounded cost; the cheap checks first."""
    watchdog.saw_cpu(_cpu_seconds(pids, cpu_group), process_tree.run_delay_seconds(pids))
    if watchdog.out_of_time(time.monotonic()):
        return "timeout"
    if free_at_launch - _free_bytes(job.workdir) > job.limits.disk_cap_bytes + DISK_SLACK_BYTES:
        return "disk"  # space that no directory shows: deleted files held open or in flight
    hidden = 0
    if (
        cgroup is None
    ):  # a memory cgroup charges memfds and tmpfs itself: the scan (its cost the run's to set) is not needed
        hidden, fds = process_tree.unlinked_open_file_bytes(pids, MAX_OPEN_FILES_SCANNED)
        if fds > MAX_OPEN_FILES_SCANNED:
            return "open files"
    memory = process_tree.rss_bytes(pids) + hidden
    if isolated:
        memory += process_tree.private_tmpfs_bytes(pids, PRIVATE_TMPFS, job.limits.memory_cap_bytes)
    disk, files = tree_usage(job.workdir, job.limits.max_files)
    return watchdog.verdict(time.monotonic(), memory, disk, files)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def run_sandboxed(job: SandboxJob, on_line: Callable[[str], None] | None = None) -> SandboxOutcome:
    """Run job to completion or until the watchdog kills it. Nothing it started is left running."""
    bwrap = bwrap_path()
    if bwrap is None:
        warn_unisolated()
    as_root = sandbox_identity.as_root() and bwrap is not None
    token = uuid.uuid4().hex
    cgroup = MemoryCgroup.create(f"autoresearch-{token}", job.limits.memory_cap_bytes)
    cpu_group = CpuCgroup.create(f"autoresearch-{token}", cgroup)
    cpuset = CpusetCgroup.create(f"autoresearch-{token}", job.slot.cores, cgroup) if job.slot else None
    try:
        return _run(job, on_line, bwrap, as_root, token, cgroup, cpu_group, cpuset)
    finally:
        for group in (cpuset, cpu_group, cgroup):
            if group is not None:
                group.remove()


def _run(
    job: SandboxJob,
    on_line: Callable[[str], None] | None,
    bwrap: str | None,
    as_root: bool,
    token: str,
    cgroup: MemoryCgroup | None,
    cpu_group: CpuCgroup | None,
    cpuset: CpusetCgroup | None,
) -> SandboxOutcome:
    userns_fd = sandbox_identity.user_namespace_fd() if as_root else None
    seccomp_fd = syscall_filter.program_fd() if bwrap else None
    passed = tuple(fd for fd in (userns_fd, seccomp_fd) if fd is not None)
    log = None
    try:
        argv = (bwrap_argv(bwrap, job, userns_fd, seccomp_fd) if bwrap else []) + job.argv
        env = _base_env(job, token)
        log = BoundedLog(job.log_path, on_line)
        free_at_launch = _free_bytes(job.workdir)
        cores = job.slot.cores if job.slot else None  # a slot's load is judged on its own cores
        load_start, busy_start = host_load(), process_tree.host_busy_seconds(cores)
        launched = time.monotonic()
        watchdog = Watchdog(launched, job.limits, job.cpu_clock, marker=job.marker)
        if job.deadline_env:
            env[job.deadline_env] = f"{watchdog.deadline_on_budget_clock():.3f}"
        proc = subprocess.Popen(
            argv,
            cwd=job.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=passed,
            preexec_fn=_child_setup(job, private_ipc=as_root, cgroup=cgroup, cpu_group=cpu_group, cpuset=cpuset),
        )
    except BaseException:
        if log is not None:
            log.file.close()
        raise
    finally:
        for fd in passed:
            os.close(fd)
    # the caller's context (Prefect's run and settings) must reach on_line in the reader thread
    context = contextvars.copy_context()

    def read_cpu() -> float:
        return _cpu_seconds(process_tree.descendants(proc.pid), cpu_group)

    reader = threading.Thread(target=context.run, args=(_stream, proc.stdout, log, watchdog, read_cpu), daemon=True)
    reader.start()
    exited, exited_at = threading.Event(), []
    killer = _Killer(proc, token, cgroup, exited)
    # the kill at deadline + export allowance (on a CPU clock: the wall ceiling) has its own timer: no measurement,
    # however slow, can delay it
    timer = threading.Timer(max(0.0, watchdog.kill_at() - time.monotonic()), killer.kill)
    timer.daemon = True
    timer.start()
    waiter = threading.Thread(target=_wait_for_exit, args=(proc.pid, exited, exited_at), daemon=True)
    waiter.start()
    final_cpu = busy_at_exit = 0.0
    try:
        while waiter.is_alive():
            waiter.join(POLL_S)
            if waiter.is_alive():
                verdict = _resource_verdict(
                    process_tree.descendants(proc.pid),
                    job,
                    watchdog,
                    bwrap is not None,
                    free_at_launch,
                    cgroup,
                    cpu_group,
                )
                if verdict:
                    killer.kill(verdict)
    finally:
        timer.cancel()
        killer.kill()
        waiter.join()
        final_cpu = _cpu_seconds([proc.pid], cpu_group)  # exited, not reaped: its stat still reads
        busy_at_exit = process_tree.host_busy_seconds(cores)
        killer.sweep()
        proc.wait()  # reap only now
        reader.join(timeout=60)  # everything that held the pipe is dead: the reader sees its end
        if not reader.is_alive():
            proc.stdout.close()
    ended = exited_at[0] if exited_at else time.monotonic()
    watchdog.saw_cpu(final_cpu)
    if watchdog.marker_seen_at is not None:
        watchdog.saw_marker_cpu(final_cpu)  # only if the reader could not read it (the first reading stands)
    marker_at = watchdog.clock_at_marker()
    killed_for = killer.reason
    if killed_for is None and watchdog.out_of_time(ended):
        killed_for = "timeout"  # killed by the timer, or out on its own after its time was up
    if cgroup is not None and cgroup.oom_kills() and killed_for in (None, "timeout"):
        killed_for = "memory"
    rc = proc.returncode
    ceiling = job.cpu_threads > 0 and killed_for == "timeout" and watchdog.cpu_seconds <= watchdog.cpu_limit()
    others_busy = busy_at_exit - busy_start - watchdog.cpu_seconds  # the machine's work that was not this run's
    compute = compute_record(
        job.cpu_threads,
        watchdog.cpu_seconds,
        ended - launched,
        watchdog.run_delay_seconds,
        others_busy,
        len(cores) if cores else os.cpu_count() or 1,
        load_start,
        host_load(),
        stopped_by_wall_ceiling=ceiling,
    )
    return SandboxOutcome(
        exit_code=rc if rc >= 0 else None,
        signal=-rc if rc < 0 else None,
        killed_for=killed_for,
        wall_seconds=ended - launched,
        training_seconds=watchdog.training_seconds(ended),
        marker_at_s=marker_at,
        after_marker_s=None if marker_at is None else max(0.0, watchdog.clock_total(ended) - marker_at),
        compute=compute,
        cpu_limit_s=watchdog.cpu_limit() if watchdog.cpu_clock else None,
        stopped_by_wall_ceiling=ceiling,
        peak_rss_bytes=watchdog.peak_memory_bytes,
        peak_disk_bytes=watchdog.peak_disk_bytes,
        log_path=job.log_path,
        isolated=bwrap is not None,
    )
