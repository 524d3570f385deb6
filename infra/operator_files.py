"""
The operator's files: the runs home and everything the orchestrator keeps in it belong to the user who
runs autoresearch, and to nobody else on the machine.

Another user of a shared machine is an adversary (README, threat model): given a directory it controls, or
a link in ours, the orchestrator would write through links (a file written by root into a Python
environment is code run as root) and trust what it finds. So:

- every process of ours creates files 0600 and directories 0700 (`private_umask`, whatever the caller's umask);
- a directory we keep files in is the operator's: a real directory, not a link, owned by this user, writable by
  no one else (`operator_dir`, which also makes one, 0700); each directory above it is owned by this user or
  root and writable by no one else unless it is sticky, like /tmp (no one else can swap it), as ssh checks;
- a file in it is opened without following a link on its last component (`O_NOFOLLOW`) and must be a regular
  file of this user's (`read_bytes`, `read_text`); a file is written as a new file beside it and renamed over the
  name (`write_bytes`, `write_text`), so a link planted at the name is replaced, never written through.

Anything else is refused with `ForeignPath`, a message saying which path and why; nothing is written.
Candidate-writable directories are another matter (infra/sandbox/safe_files.py).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


class ForeignPath(PermissionError):
    """A path the orchestrator was to use is not the operator's alone: the message says which and why."""


def private_umask() -> None:
    """Files 0600 and directories 0700 from now on, in this process and everything it starts."""
    os.umask(PRIVATE_UMASK)


def _whose(uid: int) -> str:
    return f"uid {uid}" + (" (you)" if uid == os.geteuid() else "")


def _check_ancestors(path: Path) -> None:
    """Each directory above path: owned by this user or root, and no one else may rename entries in it."""
    for parent in path.parents:
        try:
            info = os.lstat(parent)
        except OSError as exc:
            raise ForeignPath(f"cannot check {parent}: {exc.strerror}") from None
        if stat.S_ISLNK(info.st_mode):  # resolve() was not applied by the caller: refuse to guess
            raise ForeignPath(f"{parent} is a symbolic link: give the real path")
        if info.st_uid not in (0, os.geteuid()):
            raise ForeignPath(
                f"{parent} belongs to {_whose(info.st_uid)}, who could replace what is below it: "
                f"keep the runs home under directories of your own"
            )
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            raise ForeignPath(
                f"{parent} is writable by other users (mode {stat.S_IMODE(info.st_mode):o}), who could "
                f"replace what is below it: keep the runs home under directories of your own"
            )


def operator_dir(path: Path, create: bool = True) -> Path:
    """path, checked (and made, 0700, if missing and create) to be a directory of this user's alone; its mode
    is set to 0700. Raises ForeignPath otherwise."""
    path = Path(os.path.abspath(path))
    _check_ancestors(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if not create:
            raise ForeignPath(f"{path} does not exist") from None
        if not os.path.lexists(path.parent):
            operator_dir(path.parent, create=True)
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            pass  # made by a concurrent process of ours: checked below like any existing one
        info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise ForeignPath(f"{path} is a symbolic link; refusing to follow it")
    if not stat.S_ISDIR(info.st_mode):
        raise ForeignPath(f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise ForeignPath(
            f"{path} belongs to {_whose(info.st_uid)}, not to you (uid {os.geteuid()}): use a directory of your own"
        )
    if stat.S_IMODE(info.st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE, follow_symlinks=False)
    return path


def _parent_checked(path: Path) -> Path:
    """path made absolute, its directory checked to be a real directory (not a link) of this user's or root's, in
    which no one else can rename entries (not writable by others, or sticky like /tmp: there a link another user
    left at the name cannot be replaced by them, and we replace it, never follow it)."""
    path = Path(os.path.abspath(path))
    try:
        info = os.lstat(path.parent)
    except OSError as exc:
        raise ForeignPath(f"cannot use {path.parent}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ForeignPath(f"{path.parent} is not a directory (a link, or a file); refusing to use it")
    if info.st_uid not in (0, os.geteuid()):
        raise ForeignPath(f"{path.parent} belongs to {_whose(info.st_uid)}, not to you: use a directory of your own")
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise ForeignPath(
            f"{path.parent} is writable by other users (mode {stat.S_IMODE(info.st_mode):o}): use a "
            f"directory of your own"
        )
    return path


def open_file(path: Path, flags: int, mode: int = FILE_MODE) -> int:
    """An fd of path in an operator directory, its last component never a link, and a regular file of this
    user's; the caller closes it. With O_CREAT a new file gets mode (the umask aside: exactly mode)."""
    path = _parent_checked(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: a symbolic link at the name
            raise ForeignPath(f"{path} is a symbolic link; refusing to follow it") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ForeignPath(f"{path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise ForeignPath(f"{path} belongs to {_whose(info.st_uid)}, not to you")
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def restrict_file(path: Path, mode: int = FILE_MODE) -> None:
    """path, a regular file of this user's in a directory no one else can rename entries in (never a link), set to
    mode, without opening it: a database file another connection of this process holds must not be opened and
    closed beside it (closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's
    included: two processes sharing an SQLite store then read a half-written file)."""
    path = _parent_checked(path)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise ForeignPath(f"{path} is not a regular file (a link, or another kind of file); refusing to use it")
    if info.st_uid != os.geteuid():
        raise ForeignPath(f"{path} belongs to {_whose(info.st_uid)}, not to you")
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)  # not a link (above), in a directory only its owner can rename entries in


def read_bytes(path: Path) -> bytes:
    fd = open_file(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def read_text(path: Path) -> str:
    """The file's text (UTF-8, strictly: a file that is not text is an error, not a guess)."""
    return read_bytes(path).decode("utf-8")


def write_bytes(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace path's content atomically: a new file beside it, then a rename over the name (a link there is
    replaced, never followed; a reader sees the old content or the new, never half)."""
    path = _parent_checked(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        os.unlink(partial)  # a leftover of a killed process of ours
    except FileNotFoundError:
        pass
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(partial, path)
    except BaseException:
        try:
            os.unlink(partial)
        except FileNotFoundError:
            pass
        raise


def write_text(path: Path, text: str, mode: int = FILE_MODE) -> None:
    write_bytes(path, text.encode("utf-8"), mode)


def append_to(path: Path):
    """A binary file object appending to path (a log), created 0600 if missing; never through a link."""
    return os.fdopen(open_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab")
