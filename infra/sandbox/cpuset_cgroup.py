"""
A cpuset cgroup for each sandboxed run of a slot (infra/sandbox/slots.py), where the machine lets the orchestrator
make one: the kernel then keeps every task of the run on the slot's cores, whatever affinity it asks for.

cgroup v1: a group of its own in the cpuset hierarchy (cpuset.cpus, and cpuset.mems copied from its parent, which
v1 requires before a task may join). cgroup v2: the run's memory group (infra/sandbox/memory_cgroup.py), where
the parent delegates the cpuset controller. Without one, the run's affinity (set before exec) and the syscall
filter's refusal of sched_setaffinity keep it there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infra.sandbox.memory_cgroup import MemoryCgroup, own_v1_dir, remove_group


def cpu_list(cores: tuple[int, ...]) -> str:
    return ",".join(map(str, cores))


@dataclass
class CpusetCgroup:
    path: Path
    owned: bool  # v1: a group of its own, to enter and remove; v2: the memory group's

    @classmethod
    def create(cls, name: str, cores: tuple[int, ...], memory: MemoryCgroup | None) -> CpusetCgroup | None:
        """A group that holds a run on cores; None if the machine does not allow one."""
        if memory is not None and memory.version == 2:
            try:
                (memory.path / "cpuset.cpus").write_text(cpu_list(cores))
            except OSError:
                return None
            return cls(memory.path, owned=False)
        parent = own_v1_dir("cpuset")
        if parent is None:
            return None
        path = parent / name
        try:
            path.mkdir()
        except OSError:
            return None
        group = cls(path, owned=True)
        try:
            (path / "cpuset.cpus").write_text(cpu_list(cores))
            (path / "cpuset.mems").write_text((parent / "cpuset.mems").read_text().strip())
        except OSError:
            group.remove()
            return None
        return group

    def cores(self) -> str:
        """The cores the kernel holds the group to, as it lists them ('' if it cannot be read)."""
        try:
            return (self.path / "cpuset.cpus").read_text().strip()
        except OSError:
            return ""

    def enter(self) -> None:
        """In the child before exec (v1 only: in v2 joining the memory group is joining this one)."""
        if self.owned:
            with open(self.path / "cgroup.procs", "w") as f:
                f.write("0")

    def remove(self) -> None:
        if self.owned:
            remove_group(self.path)
