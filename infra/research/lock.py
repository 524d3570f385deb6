"""
One live run per experiment: an flock on runs/<experiment>/.lock.

The kernel drops an flock when its holder dies, SIGKILL included, so a stale lock
recovers itself: the next run simply gets it. The file records who holds it. It is
opened without following a link, in a directory of the operator's (infra/operator_files.py),
and never truncated before the lock is ours.
"""

from __future__ import annotations

import fcntl
import os
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from infra import operator_files

MAX_HOLDER_BYTES = 512


class LockHeld(RuntimeError):
    """Another live process is running this experiment."""


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, MAX_HOLDER_BYTES).decode("utf-8", errors="replace").strip()


@contextmanager
def experiment_lock(directory: Path) -> Iterator[None]:
    operator_files.operator_dir(directory)
    fd = operator_files.open_file(directory / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd) or "another process"
            raise LockHeld(f"experiment {directory.name!r} is already running ({holder}); wait for it or stop it") from None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode())
        yield
    finally:
        os.close(fd)  # closing releases the flock


def lock_holder(directory: Path) -> str | None:
    """Who holds the experiment's lock now, or None if nobody does (ForeignPath: the directory or the lock is a link
    or another user's)."""
    path = directory / ".lock"
    if not os.path.lexists(directory):
        return None
    operator_files.operator_dir(directory, create=False)
    if not os.path.lexists(path):
        return None
    fd = operator_files.open_file(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _holder(fd) or "unknown"
    finally:
        os.close(fd)
