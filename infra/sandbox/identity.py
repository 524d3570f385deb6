"""
Who a candidate is on the host: an unprivileged user that owns nothing it could misuse.

Run as root, bubblewrap's own `--unshare-user --uid N` maps N to host root: the candidate has no
capabilities but still owns every root file (it could read /etc/shadow) and counts as root for
process limits. So, as root, the orchestrator makes the user namespace itself and hands it to
bubblewrap (`--userns FD`):

    inside uid/gid 0      -> host root          bubblewrap needs it to set up mounts; nothing else runs as it
    inside uid/gid 65534  -> SANDBOX_UID         the candidate, switched to by `setpriv` with no capabilities

so on the host the candidate is SANDBOX_UID (default 2000000000, an id nothing else uses): it reads
only world-readable files and writes only what the orchestrator chowned to it. The namespace's
`user.max_user_namespaces` is 0, so the candidate cannot nest a user namespace to regain capabilities.

Not root: bubblewrap's `--unshare-user --uid 65534 --cap-drop ALL --disable-userns` maps the
sandbox user to the invoking user, who is unprivileged already.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

INSIDE_UID = 65534  # 'nobody' inside the sandbox
UID_ENV = "AUTORESEARCH_SANDBOX_UID"
DEFAULT_SANDBOX_UID = 2_000_000_000
CLONE_NEWUSER = 0x10000000
CLONE_NEWIPC = 0x08000000


class SandboxSetupError(RuntimeError):
    """The sandbox's unprivileged identity could not be set up on this machine."""


def as_root() -> bool:
    return os.geteuid() == 0


def sandbox_uid() -> int:
    """The host uid (and gid) a candidate runs as when the orchestrator is root."""
    value = os.environ.get(UID_ENV, str(DEFAULT_SANDBOX_UID))
    if not value.isdigit() or not 0 < int(value) < 2**32 - 2:
        raise SandboxSetupError(f"{UID_ENV} must be an unused uid (a positive integer), got {value!r}")
    return int(value)


def give_to_sandbox(path: Path) -> None:
    """Let the sandbox user write path (a directory the orchestrator just created for it)."""
    if as_root():
        uid = sandbox_uid()
        os.chown(path, uid, uid, follow_symlinks=False)


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare: {os.strerror(errno)}")


def _enter_new_user_namespace() -> None:
    """In the helper child: a new user namespace in which no further user namespace may be created."""
    _unshare(CLONE_NEWUSER)
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")


def user_namespace_fd() -> int:
    """An fd of a new user namespace with the mapping in the module comment (root only); the caller closes it."""
    uid = sandbox_uid()
    try:
        helper = subprocess.Popen(
            ["sleep", "60"],
            preexec_fn=_enter_new_user_namespace,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxSetupError(
            f"cannot create a user namespace for the sandbox ({exc}); user namespaces may be "
            "disabled here. AUTORESEARCH_SANDBOX=none runs candidates unisolated (not recommended)"
        ) from exc
    try:
        mapping = f"0 0 1\n{INSIDE_UID} {uid} 1\n"
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{helper.pid}/{name}", "w") as f:
                f.write(mapping)
        return os.open(f"/proc/{helper.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxSetupError(f"cannot map the sandbox user into its namespace: {exc}") from exc
    finally:
        helper.kill()
        helper.wait()


def private_ipc_without_shared_memory() -> None:
    """In the child before exec (root only): a private IPC namespace with no SysV shared memory or message
    queues, whose pages would otherwise sit outside every process's RSS and the memory cap."""
    _unshare(CLONE_NEWIPC)
    for key in ("shmmni", "msgmni"):
        with open(f"/proc/sys/kernel/{key}", "w") as f:
            f.write("0")


def drop_to_sandbox_user() -> list[str]:
    """The command prefix that leaves bubblewrap's setup identity (inside root) for the candidate's (root only)."""
    return [
        "setpriv",
        f"--reuid={INSIDE_UID}",
        f"--regid={INSIDE_UID}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]
