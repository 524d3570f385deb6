"""
Measurement slots: the places on this machine where measured runs execute at the same time, none sharing a core
or a device with another.

    CPU slot   `cpu_threads` cores of its own. The run (and its evaluation) is pinned to them three ways: its
               affinity, set before exec; a cpuset cgroup where the machine lets the orchestrator make one
               (infra/sandbox/cpuset_cgroup.py), which the candidate cannot widen; and the syscall filter, which
               refuses sched_setaffinity (infra/sandbox/syscall_filter.py), so where there is no cpuset a candidate
               still cannot move to another slot's cores. A lone CPU slot has every usable core: with no neighbour
               to keep apart from, pinning would only stop the scheduler moving it off a core another process keeps
               busy (CI found a run pinned beside a busy loop slower than its measured allowances).
    GPU slot   one GPU and `cpu_threads` cores for its host-side work. The sandbox binds only that GPU's device node
               (/dev/nvidiaN, N its minor number) beside the driver's control and UVM nodes, and names it in
               CUDA_VISIBLE_DEVICES by its UUID, so inside it is cuda:0 and no other GPU can be opened.

Equal compute holds per slot: every slot of an experiment has the same number of cores (and the same GPU model,
checked), a CPU run's budget is CPU time of its own cores, and the contention judgement counts only the load on
the slot's own cores (infra/sandbox/compute_record.py), so the experiment's other slots are not foreign load.

The default count, measured (docs/benchmarks.md, "Slots"): one slot per GPU on a GPU machine; on a CPU machine as
many slots of `cpu_threads` cores as leave one core for the orchestrator's own work (evaluation of the test set,
proposing, Prefect): one on a 2-core machine, 15 on a 16-core one. Two slots on this 2-core machine measure 1.96x
the runs per hour at the same epochs per run (+1.1%; benchmarks/throughput.py), but leave the orchestrator no core
of its own: a choice to make on purpose (`--slots 2`), not a default.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")


class SlotError(ValueError):
    """The slots asked for do not fit this machine, or would not get equal compute."""


@dataclass(frozen=True)
class Gpu:
    """One GPU as the sandbox binds it: the orchestrator's CUDA index, its UUID and its device node's minor number."""

    index: int
    uuid: str
    minor: int
    name: str


@dataclass(frozen=True)
class Slot:
    index: int
    cores: tuple[int, ...]  # the cores its runs are pinned to
    gpu: Gpu | None = None  # a GPU slot's device; None: a CPU slot

    @property
    def name(self) -> str:
        """The slot's tag on its Prefect task runs, and its name in logs."""
        return f"slot-{self.index}"

    @property
    def device(self) -> str | None:
        """The device inside the sandbox: a GPU slot's one GPU is cuda:0 there (CUDA_VISIBLE_DEVICES)."""
        return "cuda:0" if self.gpu else None

    def describe(self) -> str:
        cores = ",".join(map(str, self.cores))
        return (
            f"{self.name}: {self.gpu.name} (cuda:{self.gpu.index}) + cores {cores}"
            if self.gpu
            else f"{self.name}: cores {cores}"
        )


def usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def default_slot_count(cpu_threads: int, gpus: int = 0, cores: int | None = None) -> int:
    """One per GPU; else as many CPU slots as leave the orchestrator one core (at least one slot)."""
    if gpus:
        return gpus
    cores = len(usable_cores()) if cores is None else cores
    return max(1, (cores - 1) // cpu_threads)


def cuda_index(device: str) -> int:
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not match:
        raise SlotError(f"a slot's device must be cuda or cuda:N, got {device!r}")
    return int(match.group(1) or 0)


def gpu_minor(bus_id: str, index: int) -> int:
    """The minor number of the GPU's /dev/nvidiaN, from the driver's own listing (CUDA's order need not be the
    driver's); the CUDA index where the listing cannot say."""
    for info in sorted(NVIDIA_PROC.glob("*/information")) if NVIDIA_PROC.is_dir() else []:
        if info.parent.name.lower().endswith(bus_id.lower()[-7:]):  # "0000:3b:00.0": bus, device, function
            found = re.search(r"Device Minor:\s*(\d+)", info.read_text())
            if found:
                return int(found.group(1))
    return index


def describe_gpu(index: int) -> Gpu:
    import torch

    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        raise SlotError(
            f"no GPU cuda:{index} here ({torch.cuda.device_count() if torch.cuda.is_available() else 0} visible)"
        )
    props = torch.cuda.get_device_properties(index)
    uuid = str(props.uuid)
    uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
    bus_id = (
        f"{props.pci_domain_id:04x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
        if hasattr(props, "pci_bus_id")
        else ""
    )
    return Gpu(index=index, uuid=uuid, minor=gpu_minor(bus_id, index) if bus_id else index, name=props.name)


def plan_slots(
    count: int, cpu_threads: int, devices: list[str] | None = None, cores: list[int] | None = None
) -> list[Slot]:
    """count slots of cpu_threads cores each (and one of devices each, for GPU slots), no core or device shared.
    A plan that does not fit is refused with what would fit."""
    cores = usable_cores() if cores is None else cores
    if count < 1:
        raise SlotError(f"slots must be at least 1, got {count}")
    if count * cpu_threads > len(cores):
        raise SlotError(
            f"{count} slots of {cpu_threads} cores need {count * cpu_threads} cores; this process may "
            f"use {len(cores)} ({','.join(map(str, cores))}): at most {len(cores) // cpu_threads} slots"
        )
    gpus: list[Gpu | None] = [None] * count
    if devices:
        if len(devices) != count:
            raise SlotError(f"{count} slots but {len(devices)} devices ({','.join(devices)}): one device per slot")
        indices = [cuda_index(d) for d in devices]
        if len(set(indices)) != len(indices):
            raise SlotError(f"devices {','.join(devices)} name one GPU twice: slots never share a device")
        gpus = [describe_gpu(i) for i in indices]
        if len({g.name for g in gpus}) > 1:
            raise SlotError(
                f"the slots' GPUs differ ({', '.join(sorted({g.name for g in gpus}))}): candidates in "
                "them would not get equal compute"
            )
    if count == 1 and not devices:  # a lone slot shares a core with no neighbour: not pinned, so the scheduler may
        return [Slot(0, tuple(cores))]  # still move it off a core another process keeps busy (as before slots)
    # the highest cores first: the lowest, where the system and the orchestrator usually run, stay free longest
    spare = list(reversed(cores))
    return [Slot(k, tuple(sorted(spare[k * cpu_threads : (k + 1) * cpu_threads])), gpus[k]) for k in range(count)]
