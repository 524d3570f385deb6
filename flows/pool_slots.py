"""
Where measured runs execute when an experiment has a pool: other machines' workers (`autoresearch worker`), through
a Prefect work pool. The same contract as flows/slot_pool.py's SlotPool, so the loop does not know the difference.

Each job goes out as a flow run of the pool's measurement deployment (flows/measurement.py), its code and compute
in one parameter (infra/pool/protocol.py PoolJob), and comes back as the worker's answer in the store. The
coordinator takes an answer only for a job in flight, scores its logits against its own labels, and stores the run,
naming the worker; a candidate's first run also brings back its test logits and model file, kept in the run's
directory here as a run on a local slot leaves them. Faults:

- a worker that refuses (other prepare.py, data or slots), a flow run that ends without an answer (crashed, failed,
  cancelled), a claimed job whose beat stops for POOL_SILENCE_S (its worker was SIGKILLed), or one unanswered past
  the job's wall ceiling plus ANSWER_MARGIN_S: the job goes out again with the same seed and a new id, at most
  MAX_POOL_RESUBMITS times, then the run is stored as crashed with the reason; the old flow run is marked so;
- a run the worker's load starved (contended) is measured again with the same seed, as on local slots;
- a coordinator that starts (or resumes after a crash) cancels the measurement flow runs its experiment left in
  flight and forgets their jobs: an answer to them is never taken, and the loop measures those runs again.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, replace
from pathlib import Path
from uuid import UUID

import numpy as np
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelling, Crashed
from prefect.workers.process import ProcessWorker

import prepare
from flows.measurement import MEASUREMENT_ENTRYPOINT
from infra import display
from infra.pool.protocol import (
    MAX_POOL_MODEL_BYTES,
    MAX_RESULT_BYTES,
    PoolJob,
    PoolResult,
    ResultRejected,
    accept,
    decode_logits,
    model_refusal,
    score,
)
from infra.records import MeasuredRun, PoolLease, Status
from infra.sandbox.evaluation import EVAL_STARTUP_CAP_S
from infra.sandbox.safe_files import remove_tree, write_private
from infra.sandbox.watchdog import WALL_CEILING
from infra.store import StoreBusy, StoreError, utcnow
from tasks.evaluate import POOL_TEST_LOGITS
from tasks.measure import MAX_CONTENDED_RERUNS, Bench, Job

POLL_S = 1.0
POOL_SILENCE_S = 30.0  # a claimed job with no beat for this long: its worker is gone (it beats every 5 s)
ANSWER_MARGIN_S = 120.0  # beyond the job's own wall ceilings: start-up, the store, the network
MAX_POOL_RESUBMITS = 2
WAITING_NOTE_S = 60.0  # how often to say that no worker has taken a job
BUSY_LIMIT_S = 900.0  # the pool's table locked this long (a worker's session holding it): the experiment stops
LEFTOVER_RUNS = 200  # a restarted coordinator looks back this many of its experiment's measurement flow runs
ACTIVE = (StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED)
ENDED = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)


EXPERIMENT_TAG = "autoresearch-experiment:"  # a measurement flow run's tag: whose run it is


def experiment_tag(name: str) -> str:
    return EXPERIMENT_TAG + name


def job_id_of(flow_run: FlowRun) -> str | None:
    """The job id a measurement flow run carries, or None when its parameters are not a job (anyone with the API's
    credentials can make a flow run)."""
    try:
        return PoolJob.model_validate_json(flow_run.parameters["job"]).job_id
    except (KeyError, TypeError, ValueError):
        return None


def answer_bound_s(job: PoolJob) -> float:
    """Wall seconds after which a claimed job that has not answered is given up: its training's wall ceiling, its
    two predictions' (infra/sandbox/watchdog.py, infra/sandbox/evaluation.py), and the margin."""
    limits = job.limits
    training = WALL_CEILING * (limits.startup_allowance_s + limits.budget_s + limits.export_allowance_s)
    predicting = 2 * WALL_CEILING * (EVAL_STARTUP_CAP_S + limits.inference_allowance_s)
    return training + predicting + ANSWER_MARGIN_S


def measurement_deployment(pool: str) -> UUID:
    """The pool (a process pool, made if missing) and its measurement deployment (made or updated): its id."""
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template))
        flow_id = client.create_flow_from_name("measurement")
        return client.create_deployment(
            flow_id=flow_id,
            name=pool,
            work_pool_name=pool,
            entrypoint=MEASUREMENT_ENTRYPOINT,
            enforce_parameter_schema=False,
            description="one measured run of an autoresearch experiment, on a worker of this pool",
        )


@dataclass
class Sent:
    """A job in flight on the pool, and what the coordinator has seen of it."""

    job: Job
    wire: PoolJob
    flow_run_id: UUID
    slot: int
    resubmits: int = 0
    remeasures: int = 0
    submitted: float = 0.0  # monotonic, the coordinator's clock throughout: workers' clocks are not compared
    claimed: float | None = None  # when the coordinator first saw a worker's claim
    taken: float | None = None  # when it first saw the flow run taken by a worker (pending or running), claimed or not
    last_beat: object = None  # the claim's beat_at when last seen changing...
    beat_seen: float = 0.0  # ...and when that was
    noted: float = 0.0  # when it last said that no worker has taken it


class PoolSlots:
    def __init__(
        self,
        bench: Bench,
        pool: str,
        capacity: int,
        experiment: str,
        device: str | None,
        test_images: int,
        first_slot: int = 0,
    ):
        """capacity runs in flight at once, on pool slots numbered from first_slot (the local slots, if any, have
        the numbers below: flows/mixed_slots.py)."""
        self.bench = bench
        self.pool = pool
        self.experiment = experiment
        self.device = device
        self.test_images = test_images
        self.free = list(range(first_slot, first_slot + capacity))
        self.running: dict[str, Sent] = {}
        self.busy_since: float | None = None  # when reading the pool's table first found it locked, if it is now
        self.busy_noted = 0.0
        self.deployment_id = measurement_deployment(pool)
        self._cancel_leftovers()

    # --- the SlotPool contract ---------------------------------------------------

    @property
    def idle(self) -> int:
        return len(self.free)

    def jobs(self) -> list[Job]:
        return [sent.job for sent in self.running.values()]

    def run_dirs(self) -> set[Path]:
        return {self.bench.run_dir(job.iteration, job.seed) for job in self.jobs()}

    def submit(self, job: Job) -> int:
        """Send job to the pool on a free pool slot (there must be one); returns that slot."""
        slot = self.free.pop(0)
        self._send(Sent(job, self._wire(job), UUID(int=0), slot))
        return slot

    def next_result(self) -> tuple[Job, MeasuredRun]:
        """The next run to come back, already stored, and its job; its pool slot is free again."""
        while True:
            done = self.poll()
            if done is not None:
                return done
            time.sleep(POLL_S)

    def poll(self) -> tuple[Job, MeasuredRun] | None:
        """One look at the jobs in flight: the first run that came back (stored, its pool slot free again), or
        None. A job that will not be answered goes out again, or is stored as crashed, here."""
        states = self._states()  # before the claims: a run seen ended has its answer (if any) stored already
        now = time.monotonic()
        try:
            leases = {lease.job_id: lease for lease in self.bench.store.pool_jobs(self.running, MAX_RESULT_BYTES)}
        except StoreBusy as exc:
            self._busy(exc, now)
            return None
        self.busy_since = None
        for job_id, sent in list(self.running.items()):
            lease = leases.get(job_id)
            if lease is not None and (lease.answer is not None or lease.answer_bytes is not None):
                done = self._answered(sent, lease)
            else:
                trouble = self._trouble(sent, lease, states.get(sent.flow_run_id), now)
                done = self._failed(sent, trouble) if trouble else None
            if done is not None:
                return done
        return None

    def drain(self) -> None:
        """Stop everything in flight (an error in the loop): the flow runs are cancelled, the jobs forgotten."""
        self._cancel([sent.flow_run_id for sent in self.running.values()], "the coordinator stopped")
        self._forget(list(self.running))
        self.running.clear()

    # --- sending -----------------------------------------------------------------

    def _wire(self, job: Job) -> PoolJob:
        first = job.iteration == job.decided_in and (
            job.iteration == 0
            or not (
                self.bench.store.measured_runs(self.bench.experiment_id, iteration=job.iteration)
                or any(s.job.iteration == job.iteration for s in self.running.values())
            )
        )  # a candidate's first run (every baseline run): its test logits, should it be kept, for the report
        return PoolJob.issue(
            self.experiment,
            job.iteration,
            job.decided_in,
            job.seed,
            job.code,
            self.bench.limits,
            device="cuda" if (self.device or "").startswith("cuda") else "cpu",
            want_test=first,
        )

    def _send(self, sent: Sent) -> None:
        job = sent.job
        with get_client(sync_client=True) as client:
            flow_run = client.create_flow_run_from_deployment(
                self.deployment_id,
                parameters={"job": sent.wire.model_dump_json()},
                name=f"measure-{job.iteration}-for-{job.decided_in}-pool-slot-{sent.slot}",
                tags=[experiment_tag(self.experiment), f"pool-slot-{sent.slot}"],
            )
        sent.flow_run_id = flow_run.id
        sent.submitted = sent.noted = time.monotonic()
        self.running[sent.wire.job_id] = sent

    def _again(self, sent: Sent, **counts: int) -> None:
        """The same run (same seed) out again under a new job id: an answer to the old one is never taken."""
        self.running.pop(sent.wire.job_id, None)
        self._forget([sent.wire.job_id])
        self._send(replace(sent, wire=sent.wire.again(), claimed=None, taken=None, last_beat=None, **counts))

    def _forget(self, job_ids: list[str]) -> None:
        """Drop settled jobs' rows from the store. Only tidiness: an answer is taken only for a job in flight here,
        so a row a locked table keeps is never read again."""
        try:
            self.bench.store.forget_pool_jobs(job_ids)
        except StoreBusy as exc:
            print(f"pool {self.pool}: {len(job_ids)} settled job(s) left in the store: {exc}")

    def _busy(self, exc: StoreBusy, now: float) -> None:
        """The pool's table is locked (by a worker's session): say so once a minute; past BUSY_LIMIT_S, stop."""
        if self.busy_since is None:
            self.busy_since = self.busy_noted = now
            print(f"pool {self.pool}: cannot read the jobs' answers: {exc}")
        elif now - self.busy_since > BUSY_LIMIT_S:
            raise StoreError(f"pool {self.pool}: its jobs table locked for {now - self.busy_since:.0f} s: {exc}")
        elif now - self.busy_noted > WAITING_NOTE_S:
            self.busy_noted = now
            print(f"pool {self.pool}: the jobs table is still locked ({now - self.busy_since:.0f} s)")

    # --- what came back ------------------------------------------------------------

    def _answered(self, sent: Sent, lease: PoolLease) -> tuple[Job, MeasuredRun] | None:
        wire = sent.wire
        worker = display.one_line(lease.worker)  # the store's text, written by a worker: shown only escaped
        try:
            if lease.answer is None:
                raise ResultRejected(f"an answer of {lease.answer_bytes:,} bytes, over {MAX_RESULT_BYTES:,}")
            result = accept(lease.answer, {wire.job_id: wire}, prepare.VAL_SIZE, self.test_images)
            if result.worker != lease.worker:
                raise ResultRejected(f"an answer signed {result.worker}, not by the worker that claimed the job")
        except ResultRejected as exc:
            return self._failed(sent, f"the answer of worker {worker} was rejected: {exc}")
        if result.refused:
            print(f"pool {self.pool}: worker {result.worker} refused job {wire.job_id}: {result.refused}")
            return self._failed(sent, f"worker {result.worker} refused it: {result.refused}")
        run = self._measured(sent, result, lease)
        again = run.contended and sent.remeasures < MAX_CONTENDED_RERUNS
        stored = self.bench.store.add_measured_run(self.bench.experiment_id, replace(run, remeasured=again))
        if again:
            print(f"iteration {sent.job.iteration} seed {sent.job.seed}: contended on {result.worker}: measured again")
            self._again(sent, remeasures=sent.remeasures + 1)
            return None
        return self._settle(sent, stored)

    def _measured(self, sent: Sent, result: PoolResult, lease: PoolLease) -> MeasuredRun:
        """The run as the coordinator scores it: the worker's logits against the coordinator's labels; its log tail
        and test logits kept in the run's directory here, as a local run leaves them."""
        run_dir = self.bench.run_dir(sent.job.iteration, sent.job.seed)
        remove_tree(run_dir)  # an earlier attempt's files (a contended run measured again) are not this answer's
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(run_dir / "train.log", (result.log_tail + "\n").encode(), 0o600)
        if result.test_logits is not None:
            buffer = io.BytesIO()
            np.save(buffer, decode_logits(result.test_logits, self.test_images), allow_pickle=False)
            write_private(run_dir / POOL_TEST_LOGITS, buffer.getvalue(), 0o600)
        if result.model_sha256 is not None:
            try:
                model = self.bench.store.pool_model(sent.wire.job_id, MAX_POOL_MODEL_BYTES)
                refused = model_refusal(model, result)
            except StoreBusy as exc:  # the run is measured all the same: its model is only kept for the user
                model, refused = None, str(exc)
            if refused:
                print(f"iteration {sent.job.iteration} seed {sent.job.seed}: model not kept: {refused}")
            else:
                write_private(run_dir / prepare.MODEL_ARTIFACT, model, 0o600)
        scored = score(result, result.val_logits, self.bench.val[1])
        status, reason = result.status, result.reason
        if status == Status.OK and not scored.ok:
            status, reason = Status.INVALID, scored.reason
        return MeasuredRun(
            seq=0,
            iteration=sent.job.iteration,
            decided_in=sent.job.decided_in,
            seed=sent.job.seed,
            status=status,
            val_accuracy=scored.accuracy if status == Status.OK else None,
            reason="ok" if status == Status.OK else reason,
            val_loss=scored.loss if status == Status.OK else None,
            epochs=result.epochs,
            train_seconds=result.train_seconds,
            wall_seconds=result.wall_seconds,
            inference_seconds=result.inference_seconds,
            contended=result.compute is not None and result.compute.contended,
            compute=result.compute,
            slot=sent.slot,
            started_at=lease.started_at,
            worker=result.worker,
        )

    def _trouble(self, sent: Sent, lease: PoolLease | None, state: State | None, now: float) -> str:
        """Why the job will not be answered, or '' (it may still be)."""
        if state is not None and state.type in ENDED:
            return f"its flow run ended {state.type.value.lower()} without an answer" + (
                f": {display.one_line(state.message)[:300]}" if state.message else ""
            )
        if lease is None:
            if state is not None and state.type in (StateType.PENDING, StateType.RUNNING):
                sent.taken = sent.taken or now  # a worker took the flow run: it claims the job as it starts
                if now - sent.taken > POOL_SILENCE_S + ANSWER_MARGIN_S:
                    return f"its flow run has been {state.type.value.lower()} {now - sent.taken:.0f} s without a claim"
            if now - sent.noted > WAITING_NOTE_S:
                sent.noted = now
                print(f"pool {self.pool}: no worker has taken job {sent.wire.job_id} in {now - sent.submitted:.0f} s")
            return ""
        if sent.claimed is None:
            sent.claimed = now
        if lease.beat_at != sent.last_beat:
            sent.last_beat, sent.beat_seen = lease.beat_at, now
        elif now - sent.beat_seen > POOL_SILENCE_S:
            return f"worker {display.one_line(lease.worker)} went silent ({now - sent.beat_seen:.0f} s without a beat)"
        if now - sent.claimed > answer_bound_s(sent.wire):
            return f"worker {display.one_line(lease.worker)} did not answer within {answer_bound_s(sent.wire):.0f} s"
        return ""

    def _failed(self, sent: Sent, why: str) -> tuple[Job, MeasuredRun] | None:
        """Out again with the same seed, or, after MAX_POOL_RESUBMITS, stored as crashed with the reason."""
        self._cancel([sent.flow_run_id], why, crashed=True)
        if sent.resubmits < MAX_POOL_RESUBMITS:
            print(f"pool {self.pool}: job {sent.wire.job_id}: {why}; submitted again (try {sent.resubmits + 2})")
            self._again(sent, resubmits=sent.resubmits + 1)
            return None
        stored = self.bench.store.add_measured_run(
            self.bench.experiment_id,
            MeasuredRun(
                seq=0,
                iteration=sent.job.iteration,
                decided_in=sent.job.decided_in,
                seed=sent.job.seed,
                status=Status.CRASHED,
                val_accuracy=None,
                reason=f"the pool could not measure it ({MAX_POOL_RESUBMITS + 1} tries): {why}"[:2000],
                slot=sent.slot,
                started_at=utcnow(),
            ),
        )
        return self._settle(sent, stored)

    def _settle(self, sent: Sent, stored: MeasuredRun) -> tuple[Job, MeasuredRun]:
        self.running.pop(sent.wire.job_id, None)
        self._forget([sent.wire.job_id])
        self.free = sorted([*self.free, sent.slot])
        return sent.job, stored

    # --- Prefect -------------------------------------------------------------------

    def _states(self) -> dict[UUID, State]:
        ids = [sent.flow_run_id for sent in self.running.values()]
        if not ids:
            return {}
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids))
        return {run.id: run.state for run in runs if run.state is not None}

    def _cancel(self, flow_run_ids: list[UUID], why: str, crashed: bool = False) -> None:
        """Mark flow runs still in flight: Crashed (given up: the UI says why) or Cancelling (its worker, if alive,
        stops it)."""
        if not flow_run_ids:
            return
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)), limit=len(flow_run_ids)
            )
            for run in runs:
                if run.state is not None and run.state.type in ACTIVE:
                    state = Crashed(message=why[:500]) if crashed else Cancelling(message=why[:500])
                    client.set_flow_run_state(run.id, state, force=True)

    def _cancel_leftovers(self) -> None:
        """A coordinator that died left jobs behind: cancel the flow runs still in flight and forget every job of
        its recent flow runs (an answer that came after it died included): nothing of them is ever taken."""
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[experiment_tag(self.experiment)])),
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[self.deployment_id])),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=LEFTOVER_RUNS,
            )
        job_ids = [job_id for job_id in map(job_id_of, runs) if job_id is not None]
        active = [run.id for run in runs if run.state is not None and run.state.type in ACTIVE]
        if active:
            print(f"pool {self.pool}: cancelling {len(active)} measurement flow run(s) an earlier coordinator left")
            self._cancel(active, "its coordinator was restarted: the run is measured again")
        self._forget(job_ids)
