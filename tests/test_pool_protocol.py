"""The wire between a coordinator and a pool's workers (infra/pool): jobs, refusals, results taken as untrusted."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import threading
import time
import uuid

import numpy as np
import pytest

import prepare
from infra.pool.measurement import measure_job
from infra.pool.protocol import (
    MAX_POOL_MODEL_BYTES,
    MAX_RESULT_BYTES,
    Fingerprints,
    PoolJob,
    PoolResult,
    ResultRejected,
    accept,
    encode_logits,
    fingerprints_of,
    local_fingerprints,
    model_refusal,
    refusal,
    score,
)
from infra.records import Status
from infra.sandbox.compute_record import ComputeRecord
from infra.settings import BASELINE_TRAIN_PY, PREPARE_PY, Limits
from infra.store import Store
from tests.conftest import make_idx_files, requires_bwrap, requires_real_data

PRINTS = Fingerprints("a" * 64, "b" * 64)
LIMITS = Limits(budget_s=1.0, cpu_threads=1)


def job(**changes) -> PoolJob:
    issued = PoolJob.issue("exp", 3, 3, 12345, "print('hi')\n", LIMITS, fingerprints=PRINTS)
    return issued.model_copy(update=changes)


def logits(n: int, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, prepare.NUM_CLASSES)).astype(dtype)


def answer(for_job: PoolJob, **fields) -> bytes:
    base = dict(
        job_id=for_job.job_id,
        worker="w1",
        status=Status.OK,
        reason="predicted",
        val_logits=encode_logits(logits(20)),
        compute=ComputeRecord("cpu", threads=1, cpu_seconds=1.0),
    )
    return PoolResult.model_construct(**{**base, **fields}).model_dump_json().encode()  # unchecked: as sent


def test_a_job_travels_as_json_and_carries_the_compute():
    sent = job()
    assert len(sent.job_id) == 32 and sent.job_id != job().job_id, "each job gets a fresh random id"
    received = PoolJob.model_validate_json(sent.model_dump_json())
    assert received == sent and received.limits == LIMITS
    tampered = sent.model_dump() | {"labels": [1, 2, 3]}
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        PoolJob.model_validate(tampered)
    with pytest.raises(ValueError):
        PoolJob.model_validate(sent.model_dump() | {"limits": {"budget_s": 0}})


def test_a_worker_whose_files_or_slots_differ_refuses(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name, content in make_idx_files(tmp_path / "gz").items():  # decompressed, as prepare.ensure_data leaves them
        (data / name).write_bytes(content)
    ours = fingerprints_of(PREPARE_PY, data)
    modified = tmp_path / "prepare.py"
    modified.write_text(PREPARE_PY.read_text().replace("RUN_SUBSET = 0.98", "RUN_SUBSET = 0.99"))
    theirs = fingerprints_of(modified, data)
    assert theirs.data_sha256 == ours.data_sha256 and theirs.prepare_sha256 != ours.prepare_sha256
    sent = job(prepare_sha256=ours.prepare_sha256, data_sha256=ours.data_sha256)
    assert refusal(sent, ours, slot_threads=1) == ""
    assert "prepare.py differs" in refusal(sent, theirs, slot_threads=1)
    labels = data / "t10k-labels-idx1-ubyte"
    relabelled = labels.read_bytes()
    labels.write_bytes(relabelled[:-1] + bytes([(relabelled[-1] + 1) % 10]))  # one test label changed
    assert "the data differs" in refusal(sent, fingerprints_of(PREPARE_PY, data), slot_threads=1)
    assert "this worker's slots have 2" in refusal(sent, ours, slot_threads=2)


@requires_real_data
def test_a_worker_refuses_a_job_made_with_another_prepare_py_before_running_anything(tmp_path):
    other = tmp_path / "prepare.py"
    other.write_text(PREPARE_PY.read_text() + "\n# edited on the coordinator\n")
    mine = local_fingerprints()
    sent = PoolJob.issue(
        "exp",
        1,
        1,
        7,
        BASELINE_TRAIN_PY.read_text(),
        LIMITS,
        fingerprints=fingerprints_of(other, prepare.ensure_data()),
    )
    assert sent.data_sha256 == mine.data_sha256
    work = tmp_path / "work"
    work.mkdir()
    answer = measure_job(sent, work, slot=None, worker="w1", slot_threads=1)
    assert "prepare.py differs" in answer.result.refused and answer.result.val_logits is None and answer.model is None
    assert list(work.iterdir()) == [], "nothing ran"


def test_the_coordinator_takes_only_results_it_asked_for_within_bounds():
    sent = job()
    issued = {sent.job_id: sent}
    taken = accept(answer(sent), issued, val_images=20, test_images=20)
    assert taken.worker == "w1" and taken.status == Status.OK
    labels = __import__("torch").from_numpy(logits(20).argmax(axis=1))
    scored = score(taken, taken.val_logits, labels)
    assert scored.ok and scored.accuracy == 1.0, "the coordinator scores the logits against its own labels"

    def rejected(raw: bytes, why: str, jobs=issued) -> None:
        with pytest.raises(ResultRejected, match=why):
            accept(raw, jobs, val_images=20, test_images=20)

    rejected(answer(job()), "did not issue")
    rejected(answer(sent), "did not issue", jobs={})
    rejected(b"x" * (MAX_RESULT_BYTES + 1), "over the")
    rejected(answer(sent)[:-1] + b', "val_accuracy": 0.99}', "malformed")
    rejected(b"\x80\x04K\x01.", "malformed")  # a pickle is not JSON
    rejected(answer(sent, val_logits=encode_logits(logits(19))), "shape")
    rejected(answer(sent, val_logits=encode_logits(logits(20))[:40]), "unreadable")
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"x": 1}] * 20, dtype=object), allow_pickle=True)
    rejected(answer(sent, val_logits=base64.b64encode(buffer.getvalue()).decode()), "float32")
    rejected(answer(sent, val_logits=None), "without validation logits")
    rejected(answer(sent, test_logits=encode_logits(logits(20))), "did not ask for")
    rejected(answer(sent, model_sha256="0" * 64), "model file the job did not ask for")
    rejected(answer(sent, compute=ComputeRecord("cpu", threads=4)), "got 4 cores")
    rejected(answer(sent, compute=None), "without its compute record")
    rejected(answer(sent, compute=ComputeRecord("cpu", threads=1, cpu_seconds=1e300)), "malformed")
    rejected(answer(sent, status=Status.RUNNING), "malformed")
    rejected(answer(sent, epochs=2**63), "malformed")
    rejected(answer(sent)[:-1] + b', "wall_seconds": Infinity}', "malformed")
    rejected(answer(sent, worker="w1\x1b]0;title\x07"), "malformed")
    zipped = io.BytesIO()
    np.savez(zipped, a=logits(20))
    rejected(answer(sent, val_logits=base64.b64encode(zipped.getvalue()).decode()), "unreadable")
    header_lies = base64.b64decode(encode_logits(logits(20))).replace(b"(20, 10)", b"(10**13, 10)"[:8], 1)
    rejected(answer(sent, val_logits=base64.b64encode(header_lies).decode()), "unreadable logits")
    huge = io.BytesIO()  # a well-formed header claiming 10**13 rows: refused before any of them is read
    np.lib.format.write_array_header_1_0(huge, {"descr": "<f4", "fortran_order": False, "shape": (10**13, 10)})
    rejected(answer(sent, val_logits=base64.b64encode(huge.getvalue()).decode()), "float32 of shape")
    shown = accept(answer(sent, reason="ok\x1b[2J\rKEPT", log_tail="line\x1b[31m\nnext\x00"), issued, 20, 20)
    assert shown.reason == "okKEPT" and shown.log_tail == "line\nnext", "escape sequences and controls removed"
    refused = accept(answer(sent, refused="prepare.py differs", val_logits=None), issued, 20, 20)
    assert not score(refused, refused.val_logits, labels).ok


@requires_real_data
@requires_bwrap
def test_a_worker_measures_a_job_and_only_the_coordinator_scores_it(tmp_path):
    sent = PoolJob.issue("exp", 0, 0, 11, BASELINE_TRAIN_PY.read_text(), LIMITS, want_test=True)
    work = tmp_path / "work"
    work.mkdir()
    sent_back = measure_job(sent, work, slot=None, worker="w1", slot_threads=1)
    result = sent_back.result
    assert result.status == Status.OK, (result.reason, result.log_tail)
    assert result.val_logits and result.test_logits and result.epochs and result.compute.threads == 1
    assert "accuracy" not in result.model_dump_json(), "a worker reports no score"
    assert list(work.iterdir()) == [], "the run's files are gone once answered"
    taken = accept(
        result.model_dump_json().encode(),
        {sent.job_id: sent},
        val_images=prepare.VAL_SIZE,
        test_images=len(prepare.load_split_uint8("test")[1]),
    )
    val = score(taken, taken.val_logits, prepare.load_split_uint8("val")[1])
    test = score(taken, taken.test_logits, prepare.load_split_uint8("test")[1])
    assert val.ok and 0.5 < val.accuracy < 1 and test.ok and 0.5 < test.accuracy < 1
    shutil.rmtree(work)
    # the model file comes back beside the answer, named by its hash, and is read only within the bound
    assert sent_back.model and model_refusal(sent_back.model, taken) == ""
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    assert store.claim_pool_job(sent.job_id, "w1")
    assert store.answer_pool_job(sent.job_id, "w1", result.model_dump_json().encode(), sent_back.model)
    assert store.pool_model(sent.job_id, MAX_POOL_MODEL_BYTES) == sent_back.model
    assert store.pool_model(sent.job_id, len(sent_back.model) - 1) is None, "a longer one is never read"
    assert "differs" in model_refusal(sent_back.model[:-1] + b"x", taken)
    assert "no model file" in model_refusal(None, taken)
    store.forget_pool_jobs([sent.job_id])
    assert store.pool_model(sent.job_id, MAX_POOL_MODEL_BYTES) is None


def test_a_workers_flow_runs_each_take_a_slot_of_their_own(tmp_path, monkeypatch):
    from infra.pool import worker_setup
    from infra.pool.worker_setup import WorkerSetup

    monkeypatch.setattr(worker_setup, "SLOT_WAIT_S", 0.05)
    setup = WorkerSetup(name="w", pool="p", home=tmp_path, db_url="sqlite://", slots=2, cpu_threads=1)
    cores = [0, 1]
    monkeypatch.setattr(
        worker_setup, "plan_slots", lambda n, t, d: [worker_setup.Slot(k, (cores[k],)) for k in range(n)]
    )
    assert WorkerSetup.model_validate_json(setup.to_env()[worker_setup.WORKER_ENV]) == setup
    with setup.slot() as first, setup.slot() as second:
        assert {first.index, second.index} == {0, 1}
        taken = []

        def third() -> None:
            with setup.slot() as slot:
                taken.append(slot.index)

        waiting = threading.Thread(target=third)
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive() and not taken, "a third run waits while both slots are busy"
    waiting.join(10)
    assert taken and taken[0] in (0, 1), "and takes the first slot freed"
    with pytest.raises(ValueError):
        WorkerSetup(name="w/../x", pool="p", home=tmp_path, db_url="sqlite://", slots=1, cpu_threads=1)


def test_the_store_lets_a_job_be_claimed_once_and_answered_once_by_its_claimer(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    job_id = "a" * 32
    assert store.claim_pool_job(job_id, "w1") and not store.claim_pool_job(job_id, "w2"), "a job is measured once"
    assert not store.answer_pool_job(job_id, "w2", b"{}"), "only the worker that claimed it answers"
    assert store.answer_pool_job(job_id, "w1", b"x" * 100) and not store.answer_pool_job(job_id, "w1", b"{}")
    (lease,) = store.pool_jobs([job_id, "b" * 32], max_answer_bytes=2**20)
    assert lease.worker == "w1" and lease.answer == b"x" * 100 and lease.answer_bytes == 100
    (big,) = store.pool_jobs([job_id], max_answer_bytes=99)
    assert big.answer is None and big.answer_bytes == 100, "an answer over the bound is not read"
    store.forget_pool_jobs([job_id])
    assert store.pool_jobs([job_id], 0) == [] and store.claim_pool_job(job_id, "w2") is True


@pytest.fixture
def pool_slots(tmp_path, monkeypatch):
    """flows/pool_slots.py's PoolSlots on a real store, with Prefect stood in: a job sent is only recorded, and its
    flow run is in whatever state the test puts in `states` (by job id)."""
    import torch

    from flows import pool_slots as ps
    from infra.pool import protocol
    from tasks.measure import Bench

    monkeypatch.setattr(protocol, "local_fingerprints", lambda: PRINTS)
    monkeypatch.setattr(ps, "measurement_deployment", lambda pool: uuid.uuid4())
    monkeypatch.setattr(ps.PoolSlots, "_cancel_leftovers", lambda self: None)
    monkeypatch.setattr(ps.PoolSlots, "_cancel", lambda self, ids, why, crashed=False: None)
    states: dict[str, object] = {}
    monkeypatch.setattr(
        ps.PoolSlots, "_states", lambda self: {s.flow_run_id: states[j] for j, s in self.running.items() if j in states}
    )

    def send(self, sent) -> None:
        sent.flow_run_id, sent.submitted, sent.noted = uuid.uuid4(), time.monotonic(), time.monotonic()
        self.running[sent.wire.job_id] = sent

    monkeypatch.setattr(ps.PoolSlots, "_send", send)
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    experiment = store.ensure_experiment("exp", {"budget_s": 1.0})
    labels = torch.from_numpy(logits(prepare.VAL_SIZE).argmax(axis=1))
    run_dir = lambda i, s: tmp_path / "runs" / f"{i}" / f"seed-{s}"  # noqa: E731
    bench = Bench(store, experiment.id, run_dir, LIMITS, (None, labels), None)
    return ps.PoolSlots(bench, "p", 1, "exp", None, test_images=20), store, states, tmp_path / "runs"


def worker_answers(store: Store, wire: PoolJob, claimer: str, model: bytes | None = None, **fields) -> None:
    """A worker claims wire's job and answers it: ok, validation logits that are all right, and fields."""
    sent = dict(val_logits=encode_logits(logits(prepare.VAL_SIZE)), worker=claimer)
    if model is not None:
        sent |= dict(test_logits=encode_logits(logits(20)), model_sha256=hashlib.sha256(model).hexdigest())
    assert store.claim_pool_job(wire.job_id, claimer)
    assert store.answer_pool_job(wire.job_id, claimer, answer(wire, **{**sent, **fields}), model)


def test_the_coordinator_keeps_only_the_files_the_answer_it_takes_names(pool_slots):
    from tasks.measure import Job

    slots, store, _, runs = pool_slots
    slots.submit(Job("print('hi')\n", 0, 0, 7))  # a baseline run: it wants test logits and the model back
    (first,) = slots.running.values()
    contended = ComputeRecord("cpu", threads=1, cpu_seconds=1.0, contended=True)
    worker_answers(store, first.wire, "w1", model=b"attempt 1", compute=contended)
    assert slots.poll() is None, "a contended run is measured again"
    (second,) = slots.running.values()
    assert second.wire.job_id != first.wire.job_id and second.wire.seed == 7 and second.wire.want_test
    run_dir = runs / "0" / "seed-7"
    assert (run_dir / prepare.MODEL_ARTIFACT).read_bytes() == b"attempt 1"
    worker_answers(store, second.wire, "w2", model=b"attempt 2", worker="w1")  # claimed by w2, signed w1
    assert slots.poll() is None, "an answer not signed by its claimer is rejected, and the job sent again"
    (third,) = slots.running.values()
    worker_answers(store, third.wire, "w2")  # no model came back (over the bound on its worker)
    job, run = slots.poll()
    assert run.status == Status.OK and run.worker == "w2" and job.seed == 7 and not run.remeasured
    assert sorted(p.name for p in run_dir.iterdir()) == ["train.log"], "nothing of an earlier attempt is kept"
    assert store.pool_jobs([first.wire.job_id, second.wire.job_id, third.wire.job_id], 2**20) == []


def test_a_flow_run_a_worker_took_but_never_claimed_is_given_up(pool_slots, monkeypatch):
    from prefect.client.schemas.objects import State, StateType

    from flows import pool_slots as ps
    from tasks.measure import Job

    slots, store, states, _ = pool_slots
    slots.submit(Job("print('hi')\n", 1, 1, 9))
    (sent,) = slots.running.values()
    assert slots.poll() is None and slots.running, "a job no worker has taken waits (there may be no worker yet)"
    states[sent.wire.job_id] = State(type=StateType.RUNNING)  # taken, and its worker died before claiming it
    assert slots.poll() is None and sent.taken is not None
    monkeypatch.setattr(ps, "POOL_SILENCE_S", 0.0)
    monkeypatch.setattr(ps, "ANSWER_MARGIN_S", 0.0)
    assert slots.poll() is None
    (again,) = slots.running.values()
    assert again.wire.job_id != sent.wire.job_id and again.resubmits == 1 and again.wire.seed == 9
