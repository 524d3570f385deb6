"""
What crosses the wire between a coordinator and a pool's workers: one job out, one result back.

Fixed contract (docs/pool.md): a worker is another machine, and nothing it sends is trusted.

- **Labels never leave the coordinator.** A worker trains the candidate in its own sandbox and predicts on its own
  copy of the validation (and, when asked, test) images; it returns logits, never an accuracy. The coordinator
  scores them against its labels (`score`, infra/sandbox/evaluation.score_logits).
- **Same files or no run.** Each job carries the SHA-256 of the coordinator's prepare.py and of its data; a worker
  whose files differ refuses the job, with the reason, and trains nothing.
- **Only results the coordinator asked for.** A job id is 128 random bits the coordinator made; a result is
  accepted only for an id it issued and has not settled, only under MAX_RESULT_BYTES, and only as JSON with no
  field beyond these models' (pydantic, extra fields forbidden). Logits travel as a base64 .npy read with
  allow_pickle=False, of exactly the expected shape.
- **What the coordinator keeps comes back bounded.** A job that wants test logits (a candidate's first run) also
  brings back the run's model file, at most MAX_POOL_MODEL_BYTES, written beside the answer in the store and named
  in it by its SHA-256; the coordinator keeps it only as a file, as it keeps a model its own slots made.
- **The compute travels with the job** (budget, allowances, caps, cores) and the result says what the worker
  gave; a result whose compute is not the job's is rejected.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
import math
import secrets
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import prepare
from infra import display
from infra.records import Status
from infra.sandbox.compute_record import ComputeRecord
from infra.sandbox.evaluation import Evaluation, score_logits
from infra.settings import PREPARE_PY, Limits

MAX_CODE_BYTES = 1_000_000  # a train.py; the proposers' own cap is far below
MAX_LOG_TAIL_CHARS = 8_000  # what a result may say of its run's log
MAX_REASON_CHARS = 2_000
MAX_RESULT_BYTES = 4 * 2**20  # two splits of 10,000 x 10 float32 logits, base64, are 1.1 MB
MAX_POOL_MODEL_BYTES = 64 * 2**20  # a model file brought back (16 million float32 parameters); larger ones stay
JOB_ID_BYTES = 16
MAX_JOB_SECONDS = 86_400  # a day: the longest budget or allowance a job may carry
MAX_JOB_BYTES = 2**44  # 16 TiB


class ResultRejected(ValueError):
    """A result the coordinator does not take: why, in words."""


@dataclass(frozen=True)
class Fingerprints:
    """SHA-256 of prepare.py and of the dataset's verified contents: two machines measure alike only if they match."""

    prepare_sha256: str
    data_sha256: str


def fingerprints_of(prepare_py: Path, data_dir: Path) -> Fingerprints:
    """The fingerprints of prepare_py and of the IDX files prepare.FILES names under data_dir (each file's name and
    bytes, in a fixed order)."""
    data = hashlib.sha256()
    for name in sorted(prepare.FILES):
        data.update(name.encode() + b"\0")
        data.update(hashlib.sha256((data_dir / name).read_bytes()).digest())
    return Fingerprints(hashlib.sha256(prepare_py.read_bytes()).hexdigest(), data.hexdigest())


@cache
def local_fingerprints() -> Fingerprints:
    """This machine's: its prepare.py, and the data prepare.ensure_data verified (computed once per process)."""
    return fingerprints_of(PREPARE_PY, prepare.ensure_data(allow_download=False))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PoolJob(_Strict):
    """One measured run, as the coordinator hands it to a pool."""

    job_id: str = Field(pattern=f"^[0-9a-f]{{{2 * JOB_ID_BYTES}}}$")
    experiment: str = Field(min_length=1, max_length=200)
    iteration: int = Field(ge=0)
    decided_in: int = Field(ge=0)
    seed: int = Field(ge=0, lt=2**31)
    code: str = Field(max_length=MAX_CODE_BYTES)
    limits: Limits  # the experiment's compute: budget, allowances, caps, cores a run (its own checks apply)
    device: str | None = Field(default=None, pattern="^(cpu|cuda)$")
    want_test: bool = False  # a kept candidate: the test split's logits too, for the report
    prepare_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    data_sha256: str = Field(pattern="^[0-9a-f]{64}$")

    @field_validator("limits")
    @classmethod
    def _bounded(cls, limits: Limits) -> Limits:
        """A job holds a worker's slot for its budget: one from anyone with the Prefect API's credentials must not
        hold it for ever, nor ask for more disk or memory than a machine has."""
        seconds = (limits.budget_s, limits.startup_allowance_s, limits.export_allowance_s, limits.inference_allowance_s)
        if max(seconds) > MAX_JOB_SECONDS:
            raise ValueError(f"a budget or allowance over {MAX_JOB_SECONDS:,} s")
        if max(limits.memory_cap_bytes, limits.disk_cap_bytes) > MAX_JOB_BYTES or limits.cpu_threads > 4096:
            raise ValueError("a memory or disk cap, or a core count, no machine has")
        return limits

    @classmethod
    def issue(
        cls,
        experiment: str,
        iteration: int,
        decided_in: int,
        seed: int,
        code: str,
        limits: Limits,
        device: str | None = None,
        want_test: bool = False,
        fingerprints: Fingerprints | None = None,
    ) -> PoolJob:
        """A new job with a fresh id, carrying this machine's fingerprints and the experiment's compute."""
        prints = fingerprints or local_fingerprints()
        return cls(
            job_id=secrets.token_hex(JOB_ID_BYTES),
            experiment=experiment,
            iteration=iteration,
            decided_in=decided_in,
            seed=seed,
            code=code,
            limits=limits,
            device=device,
            want_test=want_test,
            prepare_sha256=prints.prepare_sha256,
            data_sha256=prints.data_sha256,
        )

    def again(self) -> PoolJob:
        """The same job (code, seed, compute, what it wants back) under a fresh id: an answer to this one is not
        one to it."""
        return self.model_copy(update={"job_id": secrets.token_hex(JOB_ID_BYTES)})


def refusal(job: PoolJob, local: Fingerprints, slot_threads: int) -> str:
    """Why a worker with these files and a slot of slot_threads cores must not measure job, or ''."""
    if job.prepare_sha256 != local.prepare_sha256:
        return (
            f"prepare.py differs from the coordinator's (sha256 {local.prepare_sha256[:12]} here, "
            f"{job.prepare_sha256[:12]} there): this worker's runs would not be measured alike"
        )
    if job.data_sha256 != local.data_sha256:
        return (
            f"the data differs from the coordinator's (sha256 {local.data_sha256[:12]} here, "
            f"{job.data_sha256[:12]} there): run prepare.py on this worker"
        )
    if job.limits.cpu_threads != slot_threads:
        return f"the job asks for {job.limits.cpu_threads} cores a run; this worker's slots have {slot_threads}"
    return ""


MEASURED = (Status.OK, Status.CRASHED, Status.TIMEOUT, Status.INVALID)  # how a run a worker made can end
MAX_EPOCHS = 10**6
WORKER_NAME = r"^[A-Za-z0-9._-]{1,200}$"


class PoolResult(_Strict):
    """What a worker sends back for one job: how the run went, and logits in place of any score. Its text is the
    worker's (and, in the log tail and reasons, the candidate's): stored and shown only with escape sequences and
    control characters removed (infra/display.py)."""

    job_id: str = Field(pattern=f"^[0-9a-f]{{{2 * JOB_ID_BYTES}}}$")
    worker: str = Field(pattern=WORKER_NAME)
    refused: str = Field(default="", max_length=1000)  # the worker would not run the job: why (nothing else set)
    status: Status = Status.CRASHED
    reason: str = Field(default="", max_length=MAX_REASON_CHARS)
    epochs: int | None = Field(default=None, ge=0, le=MAX_EPOCHS)
    train_seconds: float | None = Field(default=None, ge=0, le=1e7)
    wall_seconds: float = Field(default=0.0, ge=0, le=1e7)
    inference_seconds: float | None = Field(default=None, ge=0, le=1e7)
    compute: ComputeRecord | None = None
    log_tail: str = Field(default="", max_length=MAX_LOG_TAIL_CHARS)
    val_logits: str | None = None  # base64 of a float32 .npy, validation images x classes
    test_logits: str | None = None  # the same for the test split, when the job wanted it
    model_sha256: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")  # the model file sent with it, if any

    @field_validator("refused", "reason")
    @classmethod
    def _one_line(cls, text: str) -> str:
        return display.without_controls(text)

    @field_validator("log_tail")
    @classmethod
    def _lines(cls, text: str) -> str:
        return display.without_controls(text, multiline=True)

    @field_validator("status")
    @classmethod
    def _measured(cls, status: Status) -> Status:
        if status not in MEASURED:
            raise ValueError(f"a measured run ends {', '.join(MEASURED)}, not {status}")
        return status

    @field_validator("compute")
    @classmethod
    def _sane_compute(cls, compute: ComputeRecord | None) -> ComputeRecord | None:
        if compute is None:
            return None
        numbers = [v for v in dataclasses.astuple(compute) if isinstance(v, float)]
        if not all(math.isfinite(v) and 0 <= v <= 1e7 for v in numbers) or not 0 <= compute.threads <= 4096:
            raise ValueError("compute record out of range")
        if compute.clock not in ("cpu", "wall"):
            raise ValueError(f"unknown clock {compute.clock!r}")
        return compute


def encode_logits(logits: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(logits, dtype=np.float32), allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_logits(text: str, images: int) -> np.ndarray:
    """Logits from a result, as untrusted data: exactly a little-endian float32 C-order .npy of images x classes,
    its header read and checked before a byte of data is (a header may claim any shape)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ResultRejected("unreadable logits: not base64") from None
    shape = (images, prepare.NUM_CLASSES)
    stream = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(stream)
        if version != (1, 0):
            raise ValueError(f".npy version {version}")
        header = np.lib.format.read_array_header_1_0(stream)
    except Exception as exc:  # numpy parses the header's Python literal: any error there is the sender's
        raise ResultRejected(f"unreadable logits: {type(exc).__name__}") from None
    if header != (shape, False, np.dtype("<f4")):
        raise ResultRejected(f"logits must be little-endian float32 of shape {shape}, in C order")
    data = raw[stream.tell() :]
    if len(data) != images * prepare.NUM_CLASSES * 4:
        raise ResultRejected(f"logits of {len(data)} bytes, not the {images * prepare.NUM_CLASSES * 4} their shape has")
    return np.frombuffer(data, dtype="<f4").reshape(shape).copy()


def accept(raw: bytes, issued: Mapping[str, PoolJob], val_images: int, test_images: int) -> PoolResult:
    """The result in raw, if it answers a job in issued (the jobs in flight, by id) within the wire's bounds; its
    logits are decoded here once, so a result that is accepted can be scored. ResultRejected says why not."""
    try:
        return _accept(raw, issued, val_images, test_images)
    except ResultRejected:
        raise
    except Exception as exc:  # whatever a worker sent, a rejection: never an error that stops the coordinator
        raise ResultRejected(f"unusable result: {type(exc).__name__}") from None


def _accept(raw: bytes, issued: Mapping[str, PoolJob], val_images: int, test_images: int) -> PoolResult:
    if len(raw) > MAX_RESULT_BYTES:
        raise ResultRejected(f"result of {len(raw):,} bytes, over the {MAX_RESULT_BYTES:,} a result may have")
    try:
        result = PoolResult.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]["msg"]
        raise ResultRejected(f"malformed result: {exc.error_count()} error(s), first: {first}") from None
    job = issued.get(result.job_id)
    if job is None:
        raise ResultRejected("a result for a job this coordinator did not issue, or has settled")
    if result.refused:
        return result
    cpu = job.device != "cuda"
    if result.compute is not None and cpu and result.compute.threads != job.limits.cpu_threads:
        raise ResultRejected(f"the run got {result.compute.threads} cores; the job gave {job.limits.cpu_threads}")
    if result.status == Status.OK and result.compute is None:
        raise ResultRejected("an ok run without its compute record")
    if result.status == Status.OK and result.val_logits is None:
        raise ResultRejected("an ok run without validation logits")
    if result.val_logits is not None:
        decode_logits(result.val_logits, val_images)
    if result.test_logits is not None:
        if not job.want_test:
            raise ResultRejected("test logits the job did not ask for")
        decode_logits(result.test_logits, test_images)
    if result.model_sha256 is not None and not (job.want_test and result.status == Status.OK):
        raise ResultRejected("a model file the job did not ask for")
    return result


def model_refusal(model: bytes | None, result: PoolResult) -> str:
    """Why the model file read from the store is not the one the accepted result names, or ''."""
    if model is None:
        return f"no model file of at most {MAX_POOL_MODEL_BYTES:,} bytes came with it"
    if hashlib.sha256(model).hexdigest() != result.model_sha256:
        return "the model file is not the one its answer names (sha256 differs)"
    return ""


def score(result: PoolResult, logits: str | None, labels: torch.Tensor) -> Evaluation:
    """Accuracy and loss of an accepted result's logits against the coordinator's labels."""
    if result.status != Status.OK or logits is None:
        return Evaluation(False, result.refused or result.reason or "no logits")
    return score_logits(decode_logits(logits, len(labels)), labels)
