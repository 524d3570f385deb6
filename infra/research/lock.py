"""
One live run per experiment: an flock on runs/<experiment>/.lock.

The kernel drops an flock when its holder dies, SIGKILL included, so a stale lock
recovers itself: the next run simply gets it. The file records who holds it.
"""

from __future__ import annotations

import fcntl
import os
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator


class LockHeld(RuntimeError):
    """Another live process is running this experiment."""


@contextmanager
def experiment_lock(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "another process"
            raise LockHeld(f"experiment {directory.name!r} is already running ({holder}); wait for it or stop it") from None
        os.ftruncate(fd, 0)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode())
        yield
    finally:
        os.close(fd)  # closing releases the flock


def lock_holder(directory: Path) -> str | None:
    """Who holds the experiment's lock now, or None if nobody does."""
    path = directory / ".lock"
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return path.read_text().strip() or "unknown"
    finally:
        os.close(fd)
