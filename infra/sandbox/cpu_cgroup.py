"""
The kernel's CPU accounting for each sandboxed run, where the machine lets the orchestrator make a group.

Summing /proc (infra/sandbox/process_tree.py) misses a child nobody waited for: a process whose parent ignores
SIGCHLD is reaped by the kernel and its CPU time is added to no one, so a candidate could compute in
short-lived children the CPU clock never sees. A cgroup's usage counts every task that ever ran in it,
reaped or not. cgroup v1: a group in the cpuacct hierarchy (cpuacct.usage, nanoseconds); cgroup v2:
the run's own group, already made for memory (cpu.stat usage_usec). Without one, the /proc sum is the
clock, and the README says what that leaves open.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from infra.sandbox.memory_cgroup import MemoryCgroup, own_v1_dir, remove_group


@dataclass
class CpuCgroup:
    path: Path
    version: int
    owned: bool  # v1: a group of its own, to enter and remove; v2: the memory group's

    @classmethod
    def create(cls, name: str, memory: MemoryCgroup | None) -> CpuCgroup | None:
        """Accounting for a new run; None if the machine does not allow it."""
        if memory is not None and memory.version == 2:
            group = cls(memory.path, 2, owned=False)
            return group if (memory.path / "cpu.stat").exists() else None
        parent = own_v1_dir("cpuacct")
        if parent is None:
            return None
        try:
            (parent / name).mkdir()
        except OSError:
            return None
        return cls(parent / name, 1, owned=True)

    def enter(self) -> None:
        """In the child before exec (v1 only: in v2 joining the memory group is joining this one)."""
        if self.owned:
            with open(self.path / "cgroup.procs", "w") as f:
                f.write("0")

    def seconds(self) -> float:
        """CPU time of every task that has run in the group, 0.0 if it cannot be read."""
        try:
            if self.version == 1:
                return int((self.path / "cpuacct.usage").read_text()) / 1e9
            for line in (self.path / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
        except (OSError, ValueError):
            pass
        return 0.0

    def remove(self) -> None:
        if self.owned:
            remove_group(self.path)


def accounting_available() -> bool:
    """Whether this machine lets the orchestrator count a run's CPU time in the kernel (for tests)."""
    name = f"autoresearch-probe-{os.getpid()}"
    memory = MemoryCgroup.create(name, 2**30)
    probe = CpuCgroup.create(name, memory)
    for group in (probe, memory):
        if group is not None:
            group.remove()
    return probe is not None
