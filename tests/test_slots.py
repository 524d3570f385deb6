"""
Measurement slots (infra/sandbox/slots.py): planning, pinning, a GPU slot's device, and the loop with two slots on
the real data: runs overlap, each candidate sees only its own core, noise is still not kept, and a hostile
candidate in one slot changes nothing in the other's run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from infra.experiment_config import ExperimentConfig
from infra.research.code_edit import set_constants
from infra.sandbox import process_tree
from infra.sandbox.run import SandboxJob, _base_env, gpu_device_nodes
from infra.sandbox.slots import Gpu, Slot, SlotError, default_slot_count, plan_slots
from infra.settings import BASELINE_TRAIN_PY, REPO_ROOT, Limits
from tests.conftest import requires_bwrap, requires_real_data

FIXTURES = Path(__file__).parent / "fixtures"
TWO_CORES = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two slots need two usable cores")

# printed by a candidate: the cores it may run on, and every core its processes were seen running on
PROBE = """
import os as _os, threading as _threading, atexit as _atexit
def _cpu():
    return int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[36])
_seen = set()
def _sample():
    while True:
        _seen.add(int(open("/proc/self/task/%d/stat" % _os.getpid()).read().rsplit(")", 1)[1].split()[36]))
        __import__("time").sleep(0.01)
_threading.Thread(target=_sample, daemon=True).start()
print("cpus_allowed:", open("/proc/self/status").read().split("Cpus_allowed_list:")[1].split()[0], flush=True)
_atexit.register(lambda: print("ran_on:", ",".join(map(str, sorted(_seen))), flush=True))
"""


def probed(code: str) -> str:
    return PROBE + code


def log_value(log: str, key: str) -> str:
    return next(line.split(": ", 1)[1] for line in log.splitlines() if line.startswith(f"{key}: "))


# --- planning ---------------------------------------------------------------------------------


def test_slots_never_share_a_core_and_a_plan_that_does_not_fit_is_refused():
    slots = plan_slots(3, 2, cores=[0, 1, 2, 3, 4, 5, 6])
    assert [s.cores for s in slots] == [(5, 6), (3, 4), (1, 2)], "the highest cores first, the lowest left over"
    assert len({c for s in slots for c in s.cores}) == 6 and [s.name for s in slots] == ["slot-0", "slot-1", "slot-2"]
    with pytest.raises(SlotError, match="at most 2 slots"):
        plan_slots(3, 2, cores=[0, 1, 2, 3, 4])
    with pytest.raises(SlotError, match="one device per slot"):
        plan_slots(2, 1, devices=["cuda:0"], cores=[0, 1])
    with pytest.raises(SlotError, match="name one GPU twice"):
        plan_slots(2, 1, devices=["cuda:1", "cuda:1"], cores=[0, 1])
    with pytest.raises(SlotError, match="at least 1"):
        plan_slots(0, 1, cores=[0, 1])


def test_the_default_leaves_the_orchestrator_a_core_or_takes_one_slot_per_gpu():
    assert default_slot_count(1, cores=2) == 1
    assert default_slot_count(1, cores=16) == 15
    assert default_slot_count(4, cores=16) == 3
    assert default_slot_count(1, cores=1) == 1, "always at least one slot"
    assert default_slot_count(1, gpus=8, cores=16) == 8


def test_a_gpu_slot_binds_only_its_own_gpu_and_names_it_by_uuid(tmp_path):
    nodes = [
        Path(f"/dev/{n}")
        for n in (
            "nvidia0",
            "nvidia1",
            "nvidia2",
            "nvidiactl",
            "nvidia-uvm",
            "nvidia-uvm-tools",
            "nvidia-modeset",
            "nvidia-caps",
        )
    ]
    gpu = Gpu(index=1, uuid="GPU-1234abcd", minor=2, name="NVIDIA H200")
    slot = Slot(1, (3,), gpu)
    assert [n.name for n in gpu_device_nodes(slot, nodes)] == [
        "nvidia2",
        "nvidiactl",
        "nvidia-uvm",
        "nvidia-uvm-tools",
        "nvidia-modeset",
        "nvidia-caps",
    ]
    assert gpu_device_nodes(None, nodes) == nodes, "outside a slot a GPU job binds them all, as before slots"
    assert gpu_device_nodes(Slot(0, (1,)), nodes) == nodes
    job = SandboxJob(
        argv=["true"], workdir=tmp_path, log_path=tmp_path / "log", limits=Limits(budget_s=1), gpu=True, slot=slot
    )
    assert _base_env(job, "token")["CUDA_VISIBLE_DEVICES"] == "GPU-1234abcd"
    assert slot.device == "cuda:0", "its one GPU is the first inside"
    cpu_job = replace(job, gpu=False, slot=Slot(0, (1,)))
    assert _base_env(cpu_job, "token").get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")


def test_the_load_on_a_slot_is_read_on_its_own_cores():
    everything = process_tree.host_busy_seconds()
    per_core = [process_tree.host_busy_seconds((c,)) for c in sorted(os.sched_getaffinity(0))]
    assert all(0 < busy <= everything + 1 for busy in per_core)
    assert process_tree.host_busy_seconds((10_000,)) == 0.0, "a core the machine does not have: no load"


def test_devices_are_checked_with_the_field_named():
    with pytest.raises(ValueError, match="cuda or cuda:N"):
        ExperimentConfig(devices=["cuda:0", "tpu:1"])
    assert ExperimentConfig(devices=["cuda:0", "cuda:1"]).devices == ["cuda:0", "cuda:1"]


def test_the_cli_refuses_more_slots_than_cores(tmp_path):
    cores = len(os.sched_getaffinity(0))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "run",
            "--experiment",
            "toomany",
            "--slots",
            str(cores + 1),
            "--home",
            str(tmp_path / "runs"),
            "--proposer",
            "offline",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"--slots: {cores + 1} slots of 1 cores need {cores + 1} cores" in " ".join(
        (done.stdout + done.stderr).split()
    )


# --- the sandbox keeps a run on its slot's cores ---------------------------------------------------


@requires_bwrap
@TWO_CORES
def test_a_run_cannot_leave_its_slots_core(tmp_path):
    from infra.sandbox.identity import give_to_sandbox
    from infra.sandbox.run import run_sandboxed

    work = tmp_path / "work"
    work.mkdir(mode=0o755)
    give_to_sandbox(work)
    code = (
        "import os\nprint('allowed:', sorted(os.sched_getaffinity(0)))\n"
        "try:\n    os.sched_setaffinity(0, set(range(64)) & set(range(os.cpu_count())))\n    print('widened')\n"
        "except OSError as exc:\n    print('refused:', exc.errno)\n"
        "print('after:', sorted(os.sched_getaffinity(0)))\n"
    )
    slot = plan_slots(2, 1)[1]
    job = SandboxJob(
        argv=[sys.executable, "-c", code],
        workdir=work,
        log_path=tmp_path / "log",
        limits=Limits(budget_s=5),
        cpu_clock=True,
        slot=slot,
    )
    outcome = run_sandboxed(job)
    log = (tmp_path / "log").read_text()
    assert outcome.exit_code == 0, log
    assert f"allowed: {list(slot.cores)}" in log and f"after: {list(slot.cores)}" in log
    assert "refused: 1" in log and "widened" not in log
    assert outcome.compute.free_cores <= len(slot.cores), "its load is judged on its own cores"


# --- a hostile candidate in one slot, a quiet one in the other ------------------------------------


BURNER = """
import os, time
# every core it can: four processes, each asking for every core, each noting where it ran
readers = []
for _ in range(4):
    r, w = os.pipe()
    if os.fork() == 0:
        try:
            os.sched_setaffinity(0, set(range(os.cpu_count())))
            widened = "widened"
        except OSError:
            widened = "refused"
        seen, end = set(), time.time() + 4
        while time.time() < end:
            seen.add(int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[36]))
        os.write(w, (widened + " " + ",".join(map(str, sorted(seen)))).encode())
        os._exit(0)
    os.close(w)
    readers.append(r)
for r in readers:
    print("burner:", os.read(r, 1000).decode(), flush=True)
"""

SNOOPER = """
import os
# the other slot's run: its directory, its processes (their command lines name its directory)
victim = {victim!r}
found = []
for path in (victim, os.path.join(victim, "work")):
    try:
        os.listdir(path)
        found.append("listed " + path)
    except OSError:
        pass
    try:
        open(os.path.join(path, "train.py")).read()
        found.append("read " + path)
    except OSError:
        pass
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            cmd = open("/proc/%s/cmdline" % pid).read()
        except OSError:
            continue
        if victim in cmd:
            found.append("process %s: %s" % (pid, cmd))
print("snooper found:", found or "nothing", flush=True)
"""


@requires_real_data
@requires_bwrap
@TWO_CORES
@pytest.mark.alone  # its run "alone" must be alone: not beside the other lane
def test_a_hostile_candidate_in_one_slot_changes_nothing_in_the_other(tmp_path):
    import prepare
    from infra.sandbox.trial import score_trial, train_candidate

    slots = plan_slots(2, 1)
    limits = Limits(budget_s=4.0, startup_allowance_s=8.0, export_allowance_s=6.0)
    victim = probed("# victim\n" + set_constants(BASELINE_TRAIN_PY.read_text(), {"LEARNING_RATE": 0.01}))
    val = prepare.load_split_uint8("val")
    alone = score_trial(train_candidate(victim, tmp_path / "alone", limits, seed=3, slot=slots[0]), val, limits)
    victim_dir = tmp_path / "beside"
    results = {}

    def measure(name: str, code: str, run_dir: Path, slot: Slot) -> None:
        results[name] = train_candidate(code, run_dir, limits, seed=3, slot=slot)

    for hostile in (BURNER, SNOOPER.format(victim=str(victim_dir))):
        threads = [
            threading.Thread(target=measure, args=("victim", victim, victim_dir, slots[0])),
            threading.Thread(target=measure, args=("hostile", hostile, tmp_path / "hostile", slots[1])),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        hostile_log = Path(results["hostile"].log_path).read_text()
        if hostile is BURNER:
            lines = [log_value(line, "burner") for line in hostile_log.splitlines() if line.startswith("burner:")]
            assert len(lines) == 4, hostile_log
            assert all(line == f"refused {slots[1].cores[0]}" for line in lines), lines
        else:
            assert log_value(hostile_log, "snooper found") == "nothing", hostile_log
        beside = score_trial(results["victim"], val, limits)
        log = Path(beside.log_path).read_text()
        assert beside.status == alone.status == "ok", (beside.reason, alone.reason)
        assert log_value(log, "cpus_allowed") == log_value(log, "ran_on") == str(slots[0].cores[0]), log
        assert not beside.contended
        # the same seed on the same core: the hostile neighbour took nothing from it (epochs under a CPU budget)
        assert beside.epochs >= 0.7 * alone.epochs, (alone.epochs, beside.epochs, alone.compute, beside.compute)


# --- the loop with two slots -------------------------------------------------------------------


QUIET_BASELINE = set_constants(BASELINE_TRAIN_PY.read_text(), {"LEARNING_RATE": 0.01})


@requires_real_data
@requires_bwrap
@TWO_CORES
def test_two_slots_overlap_each_on_its_own_core_and_noise_is_still_not_kept(tmp_path, prefect_harness):
    from flows.research import research
    from infra.research.workspace import Workspace
    from infra.store import Store

    replay = tmp_path / "replay"
    replay.mkdir()
    for k in range(1, 11):
        (replay / f"{k:02d}_copy.py").write_text(probed(f"# copy {k} of the incumbent\n{QUIET_BASELINE}"))
    (replay / "11_mlp.py").write_text(probed((FIXTURES / "mlp_adam.py").read_text()))
    baseline = tmp_path / "quiet_baseline.py"
    baseline.write_text(probed(QUIET_BASELINE))
    home = tmp_path / "runs"
    config = dict(
        name="two",
        iterations=11,
        budget_s=4.0,
        proposer=f"replay:{replay}",
        revise_every=5,
        repeats=3,
        slots=2,
        home=str(home),
        db_url=f"sqlite:///{home / 'autoresearch.db'}",
        baseline_path=str(baseline),
    )
    research(config)

    store = Store(config["db_url"])
    exp = store.experiment("two")
    assert exp.config["slots"] == 2 and exp.config["memory_cap_bytes"] > 0
    rows = store.iterations(exp.id)
    assert [r.index for r in rows] == list(range(12)) and all(r.finished_at is not None for r in rows)
    assert all(r.status == "ok" for r in rows), [(r.index, r.status, r.reason) for r in rows]
    kept_copies = [r.index for r in rows[1:11] if r.verdict == "keep"]
    assert len(kept_copies) <= 1, f"noise kept: {kept_copies}"
    assert rows[11].verdict == "keep", (rows[11].decision.get("summary"), rows[11].reason)

    measured = store.measured_runs(exp.id)
    assert [m.seq for m in measured] == list(range(1, len(measured) + 1)), "numbered once each, in order"
    assert {m.slot for m in measured} == {0, 1}
    overlapping = [
        (a.seq, b.seq)
        for a in measured
        for b in measured
        if a.slot != b.slot and a.started_at < b.made_at and b.started_at < a.made_at
    ]
    assert overlapping, "no two runs were measured at the same time"
    slots = {s.index: s for s in plan_slots(2, 1)}
    ws = Workspace(home / "two")
    for m in measured:
        log = (ws.run_dir(m.iteration, m.seed) / "train.log").read_text()
        core = str(slots[m.slot].cores[0])
        assert log_value(log, "cpus_allowed") == core and log_value(log, "ran_on") == core, (m.seq, m.slot, log[-500:])
    # every decision says which incumbent it was compared with; one re-based on a keep in flight says so
    for r in rows[1:]:
        assert r.decision["incumbent"] in [k.index for k in rows if k.verdict in ("baseline", "keep")]
        if r.decision["incumbent"] != r.decision["proposed_on"]:
            assert r.decision["rebased"].startswith("re-based: compared with iteration")
    # each measured run is its own Prefect task run, tagged with its slot
    tagged = measure_task_tags()
    assert len(tagged) >= len({m.seed for m in measured}), "one task run per measured run (the harness may hold more)"
    assert {tuple(tags) for tags in tagged} >= {("slot-0",), ("slot-1",)}
    assert all(len(tags) == 1 and tags[0].startswith("slot-") for tags in tagged)
    # strategy revision counts finished candidates: after 5, the moment the fifth is decided; after 10 only if the
    # tenth was decided before the last candidate was proposed (after it, a revision would serve no proposal)
    versions = [(s.version, s.after_iteration) for s in store.strategies(exp.id)]
    assert versions in ([(0, 0), (1, 5)], [(0, 0), (1, 5), (2, 10)]), versions
    # the research log agrees with the store: the keeps in the order they were decided
    kept = sorted((r for r in rows if r.verdict in ("baseline", "keep")), key=lambda r: r.finished_at)
    assert ws.committed_iterations() == sorted(r.index for r in kept)
    assert ws.train_py.read_text() == kept[-1].code


def measure_task_tags() -> list[list[str]]:
    """The tags of every `measure-...` task run the Prefect API holds."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    async def read() -> list[list[str]]:
        found: list[list[str]] = []
        async with get_client() as client:
            while True:  # the API gives at most 200 at a time
                page = await client.read_task_runs(
                    task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="measure-")),
                    limit=200,
                    offset=len(found),
                )
                found += [sorted(r.tags) for r in page]
                if len(page) < 200:
                    return found

    return asyncio.run(read())


class FakeSide:
    """One side of MixedSlots (a SlotPool or a PoolSlots) as the loop sees it: free slots, jobs, results."""

    def __init__(self, free: int, first_slot: int):
        self.free = list(range(first_slot, first_slot + free))
        self.running: dict[int, object] = {}
        self.finished: list[tuple[object, object]] = []
        self.drained = False

    @property
    def idle(self) -> int:
        return len(self.free)

    def jobs(self) -> list:
        return list(self.running.values())

    def run_dirs(self) -> set[Path]:
        return {Path(f"/runs/{job}") for job in self.running.values()}

    def submit(self, job) -> int:
        slot = self.free.pop(0)
        self.running[slot] = job
        return slot

    def finish(self, slot: int) -> None:
        self.finished.append((slot, self.running[slot]))

    def _take(self):
        if not self.finished:
            return None
        slot, job = self.finished.pop(0)
        del self.running[slot]
        self.free.append(slot)
        return job, f"measured {job}"

    def wait_result(self, timeout: float):
        return self._take()

    def poll(self):
        return self._take()

    def drain(self) -> None:
        self.drained = True
        self.running.clear()


def test_local_slots_and_a_pool_together_fill_local_slots_first_and_take_results_from_either(monkeypatch):
    from flows import mixed_slots
    from flows.mixed_slots import MixedSlots

    monkeypatch.setattr(mixed_slots, "POLL_S", 0.0)
    local, pool = FakeSide(1, first_slot=0), FakeSide(2, first_slot=1)
    both = MixedSlots(local, pool)
    with pytest.raises(RuntimeError, match="no run is being measured"):
        both.next_result()
    assert both.idle == 3
    assert [both.submit(job) for job in ("a", "b", "c")] == [0, 1, 2], "the local slot first, then the pool's"
    assert both.idle == 0 and sorted(both.jobs()) == ["a", "b", "c"] and Path("/runs/b") in both.run_dirs()
    pool.finish(2)
    assert both.next_result() == ("c", "measured c"), "a pool's result while the local run goes on"
    local.finish(0)
    assert both.next_result() == ("a", "measured a")
    assert both.submit("d") == 0, "a freed local slot is taken before the pool's free one"
    both.drain()
    assert local.drained and pool.drained and both.jobs() == []
    local.drained = False
    both.submit("e")

    def unreachable() -> None:
        raise ConnectionError("the Prefect server went away")

    pool.drain = unreachable
    with pytest.raises(ConnectionError):
        both.drain()
    assert local.drained, "the local runs are waited for even when the pool's side fails"


def test_gpu_slots_here_send_the_pools_jobs_to_gpus_too(monkeypatch):
    """With --local-slots on a machine with GPUs, the local runs go to GPUs: the pool's jobs must too (one device
    for every run of the experiment), and --device cpu with GPU slots here is refused."""
    from types import SimpleNamespace

    from flows import research

    monkeypatch.setattr(research, "plan_slots", lambda n, threads, devices: [Slot(k, (k,)) for k in range(n)])
    monkeypatch.setattr(research.settings, "default_memory_cap_bytes", lambda: 2**33)

    def resolved(**fields) -> ExperimentConfig:
        cfg = ExperimentConfig(pool="lab", local_slots=1, cpu_threads=1, **fields)
        loop = SimpleNamespace(cfg=cfg, exp=SimpleNamespace(config={}), _visible_gpus=lambda: ["cuda:0", "cuda:1"])
        research.Loop._resolve_pool_slots(loop)
        return cfg

    cfg = resolved()
    assert cfg.devices == ["cuda:0"] and cfg.device == "cuda"
    with pytest.raises(SlotError, match="--device cpu"):
        resolved(device="cpu", devices=["cuda:1"])
