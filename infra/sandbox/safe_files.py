"""
Files in a directory the candidate could write are attacker controlled: a name may be a symlink, a
FIFO, a device, a directory, or a file of any size (or a sparse one, cheap to make, dense to copy). The
orchestrator takes nothing from such a directory but through these functions: one name directly inside
it, opened without following links and without blocking, checked to be a regular, dense file of bounded
size, and copied out a megabyte at a time before use.
"""

from __future__ import annotations

import os
import stat
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SPARSE_CHECK_BYTES = 1 << 20  # a larger file must have at least half its length on disk


class UnsafeFile(ValueError):
    """A file the orchestrator was asked to take from a candidate-writable directory is not acceptable."""


@contextmanager
def open_untrusted(directory: Path, name: str, max_bytes: int) -> Iterator[int]:
    """An fd of directory/name if it is a regular, dense file of at most max_bytes; else UnsafeFile saying why."""
    if "/" in name or name in ("", ".", ".."):
        raise UnsafeFile(f"bad file name {name!r}")
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafeFile(f"{directory.name}/ is not a plain directory ({exc.strerror})") from None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        raise UnsafeFile(f"no {name}") from None
    except OSError as exc:  # ELOOP: a symlink
        raise UnsafeFile(f"{name} is not a regular file ({exc.strerror})") from None
    finally:
        os.close(dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(f"{name} is not a regular file")
        if info.st_size > max_bytes:
            raise UnsafeFile(f"{name} is {info.st_size} bytes, over the limit of {max_bytes}")
        if info.st_size > SPARSE_CHECK_BYTES and info.st_blocks * 512 < info.st_size // 2:
            raise UnsafeFile(f"{name} is a sparse file ({info.st_size} bytes, {info.st_blocks * 512} allocated)")
        yield fd
    finally:
        os.close(fd)


def _chunks(fd: int, max_bytes: int, name: str) -> Iterator[bytes]:
    left = max_bytes + 1
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return
        left -= len(chunk)
        if left <= 0:
            raise UnsafeFile(f"{name} grew past the limit of {max_bytes} bytes while being read")
        yield chunk


def read_untrusted(directory: Path, name: str, max_bytes: int) -> bytes:
    """The bytes of directory/name (see open_untrusted): for small files."""
    with open_untrusted(directory, name, max_bytes) as fd:
        return b"".join(_chunks(fd, max_bytes, name))


def copy_out(directory: Path, name: str, dest: Path, max_bytes: int) -> None:
    """Copy directory/name (see open_untrusted) to dest, a path the orchestrator owns, a megabyte at a time."""
    with open_untrusted(directory, name, max_bytes) as fd:
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
        try:
            with os.fdopen(out, "wb") as f:
                for chunk in _chunks(fd, max_bytes, name):
                    f.write(chunk)
        except BaseException:
            os.unlink(dest)
            raise


def write_private(path: Path, data: bytes, mode: int = 0o444) -> None:
    """Write an orchestrator file, refusing to follow a link that may stand in its place. Its mode is exactly mode,
    whatever the umask (the orchestrator's is 077; a file the sandbox user must read says so in its mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)


def remove_tree(path: Path) -> None:
    """Delete a tree whatever the candidate left in it: links are removed, never followed; depth does not
    matter (coreutils' rm walks iteratively, where shutil.rmtree recurses and fails at ~1,000 levels)."""
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
        return
    for attempt in range(2):
        done = subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], capture_output=True, text=True)
        if not os.path.lexists(path):
            return
        # directories the candidate made unreadable (mode 000): only a non-root orchestrator meets them
        subprocess.run(["chmod", "-R", "u+rwx", "--", str(path)], capture_output=True)
    raise OSError(f"could not remove {path}: {done.stderr.strip()[:300]}")


def tree_usage(path: Path, stop_after: int) -> tuple[int, int]:
    """(bytes allocated, entries) under path, not following links; stops counting after stop_after entries."""
    total, entries, stack = 0, 0, [str(path)]
    while stack and entries <= stop_after:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    entries += 1
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += info.st_blocks * 512
                    if stat.S_ISDIR(info.st_mode):
                        stack.append(entry.path)
        except OSError:
            continue
    return total, entries
