"""Reading and killing a process tree through /proc (Linux). Used by the watchdog, never by candidates."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(root: int) -> list[int]:
    """root and every process below it, setsid'ed or not (orphans reparent inside a PID namespace)."""
    children = _children_map()
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[21]) * _PAGE  # field 24 of stat: rss in pages
    return total


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) of the processes and of the children they have waited for. Summed over a
    whole tree, every thread that ever ran in it is counted once: a finished thread's time stays in its
    process, a reaped child's moves into its parent's (cutime, cstime), a zombie still shows its own."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            ticks += sum(int(f) for f in fields[11:15])  # fields 14-17 of stat: utime stime cutime cstime
    return ticks / _TICKS


def host_busy_seconds(cores: tuple[int, ...] | None = None) -> float:
    """CPU time the machine's CPUs (or only the given cores) have spent on anything (everything in /proc/stat but
    idle and iowait; stolen time counts, it was not ours to use), in seconds."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0.0
    wanted = {"cpu"} if cores is None else {f"cpu{c}" for c in cores}
    busy = 0
    for line in lines:
        name, *values = line.split()
        if name not in wanted:
            continue
        try:
            fields = [int(x) for x in values]
        except ValueError:
            continue
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        busy += sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is in user)
    return busy / _TICKS


def run_delay_seconds(pids: list[int]) -> float:
    """The most time any one of the processes' main threads spent runnable but waiting for a CPU (schedstat).
    The largest, not the sum: processes of one run that queue behind each other each wait a little, while a run
    the machine's load starves has a thread that waits most of the time."""
    most = 0
    for pid in pids:
        try:
            most = max(most, int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]))
        except (OSError, IndexError, ValueError):
            continue
    return most / 1e9


def has_env(pid: int, token: str) -> bool:
    try:
        return token.encode() in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def parent(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def pids_with_env(token: str) -> list[int]:
    """Processes whose environment holds token: finds strays that escaped the tree (no-bwrap fallback)."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != os.getpid() and has_env(int(e), token)]


def kill_verified(pids: set[int], belongs: Callable[[int], bool]) -> None:
    """SIGKILL each pid that still belongs to the run, through a pidfd: a pid that was freed and taken by
    another process between listing and killing is checked under its new owner and left alone."""
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            if belongs(pid):  # read after the pidfd pinned the process: a later reuse cannot be signalled
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(fd)


def alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def die_with_parent() -> None:
    """In a child before exec: the kernel SIGKILLs it when the parent dies, even by SIGKILL (Linux prctl)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def private_tmpfs_bytes(pids: list[int], mounts: tuple[str, ...], size_bytes: int) -> int:
    """Bytes used in the sandbox's private tmpfs mounts (memory the RSS does not show), read through the
    first process whose root holds them: each mount must be on another device than the host's same path
    and no larger than size_bytes (while bubblewrap sets up, a process still sees the host's disk there)."""
    host = {}
    for mount in mounts:
        try:
            host[mount] = os.stat(mount).st_dev
        except OSError:
            host[mount] = None
    for pid in pids:
        try:
            used = 0
            for mount in mounts:
                path = f"/proc/{pid}/root{mount}"
                st = os.statvfs(path)
                if os.stat(path).st_dev == host[mount] or st.f_blocks * st.f_frsize > size_bytes + (1 << 20):
                    raise LookupError(mount)
                used += (st.f_blocks - st.f_bfree) * st.f_frsize
            return used
        except (OSError, LookupError):
            continue
    return 0


def unlinked_open_file_bytes(pids: list[int], max_fds: int) -> tuple[int, int]:
    """(bytes, fds looked at) of files the processes hold open but no directory shows: memfds and deleted
    files (memory or disk that neither RSS nor a directory walk counts). Stops after max_fds descriptors,
    so that a run holding a million descriptors cannot stall the watchdog: the caller treats that as a kill."""
    seen: set[tuple[int, int]] = set()
    total = looked = 0
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        looked += len(fds)
        if looked > max_fds:
            return total, looked
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
                if not (target.startswith("/memfd:") or target.endswith(" (deleted)")):
                    continue
                info = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            key = (info.st_dev, info.st_ino)
            if key not in seen:
                seen.add(key)
                total += info.st_blocks * 512
    return total, looked
