"""Equal compute: on a CPU the budget is CPU time of the allotted cores, whatever else keeps the machine busy."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

import prepare
from infra import settings
from infra.records import MeasuredRun, Status
from infra.sandbox import process_tree
from infra.sandbox.allowances import allowance_for
from infra.sandbox.compute_record import compute_record, describe
from infra.sandbox.evaluation import EVAL_STARTUP_CAP_S, eval_limits, inference_over_allowance
from infra.sandbox.trial import TrialResult, train_candidate
from infra.sandbox.watchdog import WALL_CEILING, Watchdog
from infra.settings import Limits
from tests.conftest import record as make_record
from tests.conftest import requires_bwrap

# --- the clock -----------------------------------------------------------------------


LIMITS = Limits(
    budget_s=10.0,
    startup_allowance_s=3.0,
    export_allowance_s=2.0,
    memory_cap_bytes=2**30,
    disk_cap_bytes=2**30,
    max_files=100,
    cpu_threads=1,
)


def cpu_watchdog(threads: int = 2) -> Watchdog:
    return Watchdog(
        launched=1000.0, limits=LIMITS if threads == 1 else replace(LIMITS, cpu_threads=threads), cpu_clock=True
    )


def test_on_a_cpu_clock_the_budget_is_cpu_seconds_of_the_allotted_cores():
    dog = cpu_watchdog(threads=2)
    # the allowances are measured CPU seconds of the whole run: only the budget counts per core
    assert dog.deadline == 3 + 10 * 2 and dog.cpu_limit() == 3 + 10 * 2 + 2
    assert dog.deadline_on_budget_clock() == pytest.approx(23 / 2)
    dog.saw_cpu(24.9)
    assert dog.verdict(1000.0 + 50, 0) is None, "50 s of wall time for 13 s of budget: nothing on a CPU clock"
    dog.saw_cpu(25.1)
    assert dog.verdict(1000.0 + 50, 0) == "timeout"


def test_the_wall_ceiling_bounds_a_run_that_gets_no_cpu():
    dog = cpu_watchdog()
    assert dog.kill_at() == 1000.0 + WALL_CEILING * (3 + 10 + 2)
    assert dog.verdict(dog.kill_at() - 0.1, 0) is None
    assert dog.verdict(dog.kill_at(), 0) == "timeout"


def test_cpu_readings_only_ever_raise_the_clock_and_training_is_counted_per_core():
    dog = cpu_watchdog(threads=2)
    dog.saw_cpu(5.0)
    assert not dog.saw_line("epoch 1", 1000.5)
    assert dog.saw_line("budget_start: 10.0", 1001.0)  # the caller reads the CPU time now
    dog.saw_marker_cpu(5.0)
    assert not dog.saw_line("budget_start: 10.0", 1002.0) and dog.marker_seen_at == 1001.0  # the first one counts
    dog.saw_marker_cpu(9.0)
    dog.saw_cpu(2.0)  # a child reaped between two reads hides its time for a moment
    assert dog.cpu_seconds == 5.0 and dog.cpu_at_marker == 5.0
    dog.saw_cpu(25.0)  # training counts from the earlier of the marker and the end of the allowance (3 CPU s)
    assert dog.training_seconds(ended=2000.0) == pytest.approx((25.0 - 3.0) / 2)
    assert dog.clock_at_marker() == 5.0 and dog.clock_total(ended=2000.0) == 25.0  # in total, not per core


def test_a_job_names_its_marker():
    dog = Watchdog(launched=1000.0, limits=LIMITS, cpu_clock=True, marker="predict_start:")
    assert not dog.saw_line("budget_start: 10.0", 1001.0)
    assert dog.saw_line("predict_start: 10000 images", 1002.0)
    assert dog.clock_at_marker() is None  # on a CPU clock, known once its CPU time is read
    wall = Watchdog(launched=1000.0, limits=LIMITS, marker="predict_start:")
    wall.saw_line("predict_start: 10000 images", 1002.5)
    assert wall.clock_at_marker() == 2.5 and wall.clock_total(ended=1004.0) == 4.0


def test_a_wall_clock_is_unchanged_for_gpu_runs():
    dog = Watchdog(launched=1000.0, limits=LIMITS)
    assert dog.deadline == 1013.0 and dog.kill_at() == 1015.0
    dog.saw_cpu(10_000.0)
    assert dog.verdict(1014.9, 0) is None and dog.verdict(1015.0, 0) == "timeout"


def test_contended_means_the_rest_of_the_machine_left_too_little_and_the_clock_could_not_make_up():
    def record(threads=1, cpu=5.0, wall=60.0, delay=50.0, others=0.0, ceiling=True):
        return compute_record(
            threads,
            cpu_seconds=cpu,
            wall_seconds=wall,
            run_delay_seconds=delay,
            others_busy_seconds=others,
            cores=2,
            load_start=3,
            load_end=4,
            stopped_by_wall_ceiling=ceiling,
        )

    starved = record(others=1.8 * 60)  # other work used 1.8 of the 2 cores: 0.2 left for a run that needs 1
    assert starved.contended and starved.free_cores == pytest.approx(0.2) and starved.clock == "cpu"
    assert starved.core_share == pytest.approx(5 / 60, abs=1e-3)
    assert not record(others=0.5).contended, "a machine that left it its core is not to blame"
    self_made = record(delay=67.0, others=0.1 * 60)  # its own processes queued behind each other (red team)
    assert self_made.waiting_share > 1 and not self_made.contended, "waiting behind itself is not the machine's load"
    assert not record(threads=2, others=0.4 * 60).contended, "1.6 free cores are 80% of 2"
    assert record(threads=2, others=0.6 * 60).contended, "1.4 free cores are 70% of 2"
    assert not record(cpu=20, wall=20, others=1.9 * 20, ceiling=False).contended, (
        "a CPU clock makes up for the load: the run got its whole budget"
    )
    gpu = record(threads=0, cpu=20, wall=20, others=1.5 * 20, ceiling=False)
    assert gpu.contended and gpu.clock == "wall", "on a wall clock, cores lost to other work are lost time"
    assert "CONTENDED" in describe(gpu) and describe(None) == ""


def test_a_run_that_sleeps_on_a_busy_machine_is_not_contended():
    """Found by the red team: the free cores alone judged a sleeper on a busy machine contended ("kept waiting
    for a CPU by the machine's load"), to be run twice more. It must also have waited for a CPU itself."""

    def stopped_by_the_ceiling(delay):  # 5 CPU s in 60 s wall, the rest of the machine using 1.8 of 2 cores
        return compute_record(
            1,
            cpu_seconds=5.0,
            wall_seconds=60.0,
            run_delay_seconds=delay,
            others_busy_seconds=1.8 * 60,
            cores=2,
            load_start=3,
            load_end=4,
            stopped_by_wall_ceiling=True,
        )

    asleep = stopped_by_the_ceiling(delay=0.3)
    assert asleep.free_cores == pytest.approx(0.2) and not asleep.contended, "starved, but it never waited"
    kept_waiting = stopped_by_the_ceiling(delay=55.0)  # runnable all the 55 s it did not compute
    assert kept_waiting.contended
    assert not stopped_by_the_ceiling(delay=0.3 * 60).contended, "waited less than half the time it did not compute"


def test_training_budget_on_a_cpu_clock_counts_cpu_time_per_core(monkeypatch, capsys):
    cpu = {"now": 40.0}
    monkeypatch.setattr(prepare, "run_cpu_seconds", lambda: cpu["now"])
    monkeypatch.setenv(prepare.CPU_THREADS_ENV, "2")
    monkeypatch.setenv(prepare.BUDGET_ENV, "10")
    monkeypatch.setenv(prepare.DEADLINE_ENV, "28.0")  # on budget_clock(): CPU seconds per allotted core
    budget = prepare.TrainingBudget()
    assert "clock: CPU time of 2 cores" in capsys.readouterr().out
    assert budget.remaining == pytest.approx(8.0)  # 40 CPU s on 2 cores: 20 s per core used, 8 s left
    cpu["now"] += 6.0  # one epoch: 3 s per core
    budget.epoch_done()
    assert budget.epoch_seconds == [pytest.approx(3.0)] and budget.another_epoch_fits()  # 5 s left
    cpu["now"] += 6.0
    assert not budget.another_epoch_fits()  # 2 s left, 3 s predicted


def test_cpu_time_of_a_tree_includes_children_it_has_reaped(tmp_path):
    spin = "import time\nwhile time.process_time() < 1.0:\n    pass\n"
    outer = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {spin!r}])\n"]
    )
    os.waitid(os.P_PID, outer.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: its stat still reads
    try:
        assert process_tree.cpu_seconds([outer.pid]) >= 0.8
    finally:
        outer.wait()


def test_cpu_time_is_read_right_whatever_name_a_process_gives_itself():
    """A candidate names its processes: /proc/<pid>/stat then holds ')', spaces and fake fields after the pid."""
    code = textwrap.dedent("""
        import ctypes, os, sys, time
        name = sys.argv[1].encode()
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME
        while time.process_time() < 1.0:
            pass
        print("named", flush=True)
        time.sleep(60)
    """)
    for name in (") Z 1 1 1 1", "x) R 0 0 0 999", "a\n) S 9"):
        child = subprocess.Popen([sys.executable, "-c", code, name], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline() == "named\n"
            assert process_tree.cpu_seconds([child.pid]) >= 0.9, name
            assert child.pid in process_tree.descendants(os.getpid()), name
            assert process_tree.parent(child.pid) == os.getpid(), name
        finally:
            child.kill()
            child.wait()


def test_budget_clock_inside_a_process_counts_its_children():
    """DataLoader workers and other children spend the run's budget: prepare's clock sees them while they run."""
    code = textwrap.dedent("""
        import subprocess, sys, time
        import prepare
        spin = "import time\\nwhile time.process_time() < 1.0:\\n    pass\\ntime.sleep(60)"
        child = subprocess.Popen([sys.executable, "-c", spin])
        give_up = time.monotonic() + 60
        while prepare.run_cpu_seconds() - time.process_time() < 0.8 and time.monotonic() < give_up:
            time.sleep(0.05)
        print("children counted:", prepare.run_cpu_seconds() - time.process_time() >= 0.8, flush=True)
        child.kill()
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=Path(prepare.__file__).parent
    )
    assert "children counted: True" in out.stdout, out.stderr


def test_the_proposer_is_told_the_clock_and_the_compute_each_iteration_got():
    from infra.proposers.base import Hardware
    from infra.proposers.situation import hardware_text, history_text

    record = compute_record(
        1,
        cpu_seconds=9.0,
        wall_seconds=30.0,
        run_delay_seconds=20.0,
        others_busy_seconds=54.0,
        cores=2,
        load_start=2.5,
        load_end=3.0,
        stopped_by_wall_ceiling=True,
    )
    starved = MeasuredRun(0, 3, 3, 3000, Status.TIMEOUT, None, compute=record)
    text = history_text(
        [make_record(3, status="timeout", verdict="discard", epochs=4, hypothesis="wider", runs=[starved])]
    )
    assert "9.0 CPU s in 30.0 s wall, 30% of 1 cores" in text and "0.2 cores left free" in text
    assert "CONTENDED" in text and "| 4 |" in text
    hardware = hardware_text(Hardware("cpu", 120, cpu_threads=1))
    assert "120 s of CPU time on 1 allotted cores" in hardware
    assert "of wall time" in hardware_text(Hardware("cuda", 120, cpu_threads=None))


# --- the measured runs ------------------------------------------------------------------

# Fixed work per "epoch" (pure Python: no threads to share, little cache to lose), saved model at the end.
FIXED_WORK = textwrap.dedent("""
    from prepare import TrainingBudget, save_model
    from torch import nn
    budget = TrainingBudget()
    while budget.another_epoch_fits():
        total = 0
        for i in range(300_000):
            total += i * i
        budget.epoch_done()
    budget.report()
    save_model(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))
""")
BUSY_LOOP = "while True:\n    pass\n"


@requires_bwrap
@pytest.mark.alone  # its "quiet" run must be quiet: not beside the other lane
def test_the_same_candidate_does_the_same_work_on_a_busy_machine(tmp_path):
    """Every core kept busy by other processes: on a wall clock the candidate would lose a third of its
    epochs or more; on the CPU clock it completes about as many as on a quiet machine."""
    limits = Limits(budget_s=3, startup_allowance_s=8, export_allowance_s=10, memory_cap_bytes=4 * 2**30, cpu_threads=1)
    quiet = train_candidate(FIXED_WORK, tmp_path / "quiet", limits, seed=1)
    # each in a session of its own: with autogroup scheduling a session shares one fair slice, and the
    # sandboxed run is a session of its own too
    hogs = [
        subprocess.Popen([sys.executable, "-c", BUSY_LOOP], start_new_session=True)
        for _ in range(len(os.sched_getaffinity(0)) + 1)
    ]
    try:
        busy = train_candidate(FIXED_WORK, tmp_path / "busy", limits, seed=1)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert quiet.status == busy.status == "ok", (quiet.reason, busy.reason)
    assert busy.compute.core_share < 0.9, f"the machine was not busy: {busy.compute}"
    assert busy.epochs >= 0.8 * quiet.epochs, (quiet.epochs, busy.epochs, quiet.compute, busy.compute)
    # A "quiet" run beside a process another user left running is not quiet: a busy sibling core slowed its CPU
    # seconds by a third here (65 epochs against about 100 alone), so the busy run may then do relatively more.
    shared = quiet.compute.free_cores < len(os.sched_getaffinity(0)) - 0.5
    assert busy.epochs <= (1.5 if shared else 1.25) * quiet.epochs, (quiet.epochs, busy.epochs, quiet.compute)
    for result in (quiet, busy):
        assert result.compute.clock == "cpu" and result.compute.threads == 1
        assert result.compute.cpu_seconds <= limits.startup_allowance_s + limits.budget_s + limits.export_allowance_s


def test_a_contended_measurement_is_run_again_and_every_attempt_recorded(monkeypatch, tmp_path):
    import tasks.measure as measuring
    from infra.sandbox.slots import Slot
    from infra.store import Store

    outcomes = iter([True, False])
    calls: list[int] = []

    def fake_train(code, run_dir, limits, seed, iteration, device, slot):
        calls.append(seed)
        contended = next(outcomes)
        return TrialResult(
            status="timeout" if contended else "ok",
            reason="",
            val_accuracy=None,
            val_loss=None,
            epochs=3,
            train_seconds=1.0,
            wall_seconds=2.0,
            peak_memory_bytes=0,
            exit_code=0,
            signal=None,
            log_path="",
            run_dir=str(run_dir),
            isolated=True,
            compute=compute_record(
                1, 1.0, 60.0, 55.0, (1.9 if contended else 0.0) * 60, 2, 2.0, 2.0, stopped_by_wall_ceiling=contended
            ),
        )

    monkeypatch.setattr(measuring, "sandboxed_train", fake_train)
    monkeypatch.setattr(measuring, "evaluate", lambda trained, *args: trained)

    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    exp = store.ensure_experiment("contended", {})
    bench = measuring.Bench(store, exp.id, lambda i, seed: Path(f"/nowhere/{i}/{seed}"), None, None, None)
    result = measuring.measure(bench, measuring.Job("code", 4, 4, 1234), Slot(1, (0,)))
    assert result.status == "ok" and result.score is None  # ok, but no evaluation in this test: no score
    assert calls == [1234, 1234], "the same seed, measured again"
    runs = store.measured_runs(exp.id)
    assert [(r.seq, r.contended, r.remeasured, r.slot) for r in runs] == [(1, True, True, 1), (2, False, False, 1)]
    assert all(r.seed == 1234 and r.started_at <= r.made_at for r in runs) and runs[-1] == result
    assert runs[-1].as_dict()["epochs_per_second"] == pytest.approx(3.0), "on the budget's clock: 3 epochs in 1 s"


# --- the allowances around the budget, and inference's -------------------------------------


def test_the_export_allowance_replaces_the_grace():
    assert Limits(budget_s=1).export_allowance_s == settings.DEFAULT_EXPORT_ALLOWANCE_S
    assert replace(Limits(budget_s=1, export_allowance_s=3.0), budget_s=2).export_allowance_s == 3.0
    assert not hasattr(Limits(budget_s=1), "grace_s")
    with pytest.raises(ValueError):
        Limits(budget_s=1, export_allowance_s=-1)
    with pytest.raises(ValueError):
        Limits(budget_s=1, inference_allowance_s=0)


def test_an_allowance_is_a_tenth_more_than_measured_and_half_a_second():
    assert allowance_for(1.0) == 1.6 and allowance_for(3.27) == 4.1 and allowance_for(0.0) == 0.5


def test_inference_within_its_allowance_per_ten_thousand_images_is_ok():
    assert inference_over_allowance(8.0, 10_000, 8.0) is None
    assert inference_over_allowance(1.6, 2_000, 8.0) is None  # the allowance scales with the images: 1.6 s for 2,000
    over = inference_over_allowance(1.7, 2_000, 8.0)
    assert over is not None and over.startswith(
        "inference took 1.7 CPU s for 2,000 images, over the allowance of 8 CPU s per 10,000 images"
    )
    assert "14.2 CPU s for 10,000 images, over the allowance of 6 CPU s" in inference_over_allowance(14.2, 10_000, 6.0)


def test_the_evaluation_runs_on_one_core_until_the_start_up_cap_plus_the_scaled_allowance():
    job = eval_limits(Limits(budget_s=120, cpu_threads=2, inference_allowance_s=8.0), 2_000)
    dog = Watchdog(launched=0.0, limits=job, cpu_clock=True)
    assert job.cpu_threads == 1 and job.export_allowance_s == 0
    assert dog.cpu_limit() == pytest.approx(EVAL_STARTUP_CAP_S + 1.6)
    assert dog.kill_at() == pytest.approx(WALL_CEILING * (EVAL_STARTUP_CAP_S + 1.6))
