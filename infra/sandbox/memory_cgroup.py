"""
A memory cgroup for each sandboxed run, where the machine lets the orchestrator make one (cgroup v1 or v2).

The kernel then charges the run with everything it allocates, whoever holds it: process memory, tmpfs and
memfd pages (even ones no process maps or holds open, such as files in flight over a unix socket), and
kernel memory; at the memory cap it OOM-kills inside the group, never outside it. The group also lists
every process of the run, so none can slip out of the final kill. The watchdog's own accounting (RSS,
private tmpfs, unlinked open files) stays as the first check and is the fallback where no group can be
made (then memory that no process holds is not counted: README, threat model).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _own_cgroup_dirs() -> list[tuple[int, Path]]:
    """(version, directory) of this process's memory cgroup: v1's memory hierarchy, or the v2 unified one."""
    found = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            found.append((1, CGROUP_ROOT / "memory" / path.lstrip("/")))
        elif controllers == "" and (CGROUP_ROOT / "cgroup.controllers").exists():
            found.append((2, CGROUP_ROOT / path.lstrip("/")))
    return found


def own_v1_dir(controller: str) -> Path | None:
    """This process's group in the cgroup v1 hierarchy of controller (cpuacct, cpuset), or None where there is none."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return CGROUP_ROOT / controllers / path.lstrip("/")
    return None


@dataclass
class MemoryCgroup:
    path: Path
    version: int

    @classmethod
    def create(cls, name: str, limit_bytes: int) -> MemoryCgroup | None:
        """A new group under this process's own, limited to limit_bytes; None if the machine does not allow it."""
        for version, parent in _own_cgroup_dirs():
            path = parent / name
            try:
                path.mkdir()
            except OSError:
                continue
            group = cls(path, version)
            try:
                if version == 1:
                    (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
                    if (path / "memory.memsw.limit_in_bytes").exists():  # swap counts too
                        (path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
                else:
                    (path / "memory.max").write_text(str(limit_bytes))
                    (path / "memory.swap.max").write_text("0")
                return group
            except OSError:
                group.remove()
        return None

    def enter(self) -> None:
        """In the child before exec: join the group (everything it starts stays in it)."""
        with open(self.path / "cgroup.procs", "w") as f:
            f.write("0")

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def contains(self, pid: int) -> bool:
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return False
        return any(line.endswith(f"/{self.path.name}") for line in lines)

    def oom_kills(self) -> int:
        """How many processes the kernel killed in this group for memory."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> None:
        remove_group(self.path)


def remove_group(path: Path) -> None:
    """Remove a group once its processes are gone (a few tries: exiting processes leave it late)."""
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)
