"""
One live run per experiment: an flock on runs/<experiment>/.lock, and where the store is on PostgreSQL (shared by
machines) also a session-level advisory lock there (database_lock).

The kernel drops an flock when its holder dies, SIGKILL included, so a stale lock
recovers itself: the next run simply gets it. The file records who holds it. It is
opened without following a link, in a directory of the operator's (infra/operator_files.py),
and never truncated before the lock is ours.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from infra import display, operator_files

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
            raise LockHeld(
                f"experiment {directory.name!r} is already running ({holder}); wait for it or stop it"
            ) from None
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


# --- across machines: PostgreSQL's advisory lock ---------------------------------

LOCK_NAMESPACE = "autoresearch experiment "
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def lock_key(experiment: str) -> int:
    """The experiment's advisory lock key: a signed 64-bit hash of its name."""
    digest = hashlib.blake2b((LOCK_NAMESPACE + experiment).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _on_postgresql(url: str) -> bool:
    try:
        return make_url(url).get_backend_name() == "postgresql"
    except Exception:  # not a URL: not PostgreSQL (the store says what is wrong with it)
        return False


def _holder_of(connection, experiment: str) -> str | None:
    """Who holds the experiment's advisory lock (the application name its connection gave), or None."""
    key = lock_key(experiment) & 0xFFFFFFFFFFFFFFFF  # pg_locks shows a bigint key as two unsigned 32-bit halves
    row = connection.execute(
        text(
            "select a.application_name from pg_locks l join pg_stat_activity a on a.pid = l.pid "
            "where l.locktype = 'advisory' and l.granted and l.objsubid = 1 "
            "and l.classid::bigint = :high and l.objid::bigint = :low"
        ),
        {"high": key >> 32, "low": key & 0xFFFFFFFF},
    ).first()
    # any user of the database can name their connection: shown as one clean, bounded line
    return None if row is None else (display.one_line(row[0])[:MAX_HOLDER_BYTES] or "a connection with no name")


@contextmanager
def database_lock(url: str, experiment: str) -> Iterator[None]:
    """One live run of the experiment across every machine sharing the PostgreSQL store: a session-level advisory
    lock, held by a connection of its own for the run's life. The server drops it when that connection ends, so a
    SIGKILLed holder frees it (its socket closes; TCP keepalives notice a holder whose machine went away). A no-op
    for any other store (SQLite is one machine's file: the flock is enough)."""
    if not _on_postgresql(url):
        yield
        return
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    name = f"autoresearch pid {os.getpid()} on {socket.gethostname()[:20]} since {stamp}"[:63]
    engine = create_engine(url, poolclass=NullPool, connect_args={"application_name": name, **KEEPALIVE})
    try:
        with engine.connect() as connection:
            got = connection.execute(text("select pg_try_advisory_lock(:key)"), {"key": lock_key(experiment)})
            if not got.scalar():
                holder = _holder_of(connection, experiment) or "another process"
                connection.rollback()
                raise LockHeld(f"experiment {experiment!r} is already running ({holder}); wait for it or stop it")
            connection.commit()
            try:
                yield
            finally:
                connection.execute(text("select pg_advisory_unlock(:key)"), {"key": lock_key(experiment)})
                connection.commit()
    finally:
        engine.dispose()


def database_holder(url: str, experiment: str) -> str | None:
    """Who holds the experiment's advisory lock on its PostgreSQL store now, or None (and None off PostgreSQL)."""
    if not _on_postgresql(url):
        return None
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return _holder_of(connection, experiment)
    finally:
        engine.dispose()
