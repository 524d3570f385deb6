"""
A pool worker's side of one job: check it, train the candidate in this machine's sandbox, predict, answer.

Fixed contract (infra/pool/protocol.py): the answer holds logits, never a score, and a job whose prepare.py, data
or compute shape this worker does not share is refused before anything runs. The run's files live under the
worker's own directory, named by the job id alone (the experiment name came over the wire), and are removed once
the answer is made: nothing is shared with the coordinator but the answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import prepare
from infra.pool.protocol import (
    MAX_LOG_TAIL_CHARS,
    MAX_POOL_MODEL_BYTES,
    MAX_REASON_CHARS,
    PoolJob,
    PoolResult,
    encode_logits,
    local_fingerprints,
    refusal,
)
from infra.records import Status
from infra.sandbox.evaluation import predict_artifact
from infra.sandbox.safe_files import remove_tree
from infra.sandbox.slots import Slot
from infra.sandbox.trial import log_tail, train_candidate


def slot_shape_refusal(job: PoolJob, slot: Slot | None, slot_threads: int) -> str:
    """Why this slot (of slot_threads cores a run) cannot give the job the compute it carries, or ''."""
    on_gpu = slot is not None and slot.gpu is not None
    if (job.device == "cuda") != on_gpu:
        return f"the job is for {'a GPU' if job.device == 'cuda' else 'the CPU'}; this worker's slot is not"
    return refusal(job, local_fingerprints(), slot_threads)


@dataclass(frozen=True)
class Answer:
    """What a worker sends back for one job: the result, and the run's model file when the job wants it."""

    result: PoolResult
    model: bytes | None = None


def measure_job(job: PoolJob, work_dir: Path, slot: Slot | None, worker: str, slot_threads: int) -> Answer:
    """Train and predict for job in slot (slot_threads cores a run); the answer to send back (a refusal, a failed
    run, or logits, and the model file of a run that wants test logits)."""
    refused = slot_shape_refusal(job, slot, slot_threads)
    if refused:
        return Answer(PoolResult(job_id=job.job_id, worker=worker, refused=refused))
    run_dir = work_dir / job.job_id
    limits = job.limits
    device = slot.device if slot is not None and slot.gpu is not None else job.device
    try:
        trained = train_candidate(job.code, run_dir, limits, seed=job.seed, device=device, slot=slot)
        answer = dict(
            job_id=job.job_id,
            worker=worker,
            status=trained.status,
            reason=trained.reason[:MAX_REASON_CHARS],
            epochs=trained.epochs,
            train_seconds=trained.train_seconds,
            wall_seconds=trained.wall_seconds,
            compute=trained.compute,
            log_tail=log_tail(trained.log_path)[-MAX_LOG_TAIL_CHARS:],
        )
        if trained.status != Status.OK:
            return Answer(PoolResult(**answer))
        artifact = run_dir / prepare.MODEL_ARTIFACT
        val = predict_artifact(artifact, prepare.load_split_uint8("val")[0], run_dir / "eval", limits, slot)
        answer["inference_seconds"] = val.inference_seconds
        if val.logits is None:
            return Answer(PoolResult(**{**answer, "status": Status.INVALID, "reason": val.reason[:MAX_REASON_CHARS]}))
        answer["val_logits"] = encode_logits(val.logits)
        model = None
        if job.want_test:
            test = predict_artifact(artifact, prepare.load_split_uint8("test")[0], run_dir / "test-eval", limits, slot)
            answer["test_logits"] = None if test.logits is None else encode_logits(test.logits)
            model = kept_model(artifact)
            answer["model_sha256"] = None if model is None else hashlib.sha256(model).hexdigest()
        return Answer(PoolResult(**{**answer, "reason": "predicted"}), model)
    finally:
        remove_tree(run_dir)


def kept_model(artifact: Path) -> bytes | None:
    """The model file to bring back (the coordinator keeps a kept candidate's), or None over MAX_POOL_MODEL_BYTES:
    the run is still measured, its model stays here and is removed with its directory."""
    if artifact.stat().st_size > MAX_POOL_MODEL_BYTES:
        print(f"{artifact.name}: {artifact.stat().st_size:,} bytes, over {MAX_POOL_MODEL_BYTES:,}: not sent back")
        return None
    return artifact.read_bytes()
