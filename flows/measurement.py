"""
The flow a pool's worker runs: one measured run of a job the coordinator issued (infra/pool/protocol.py).

Started by `autoresearch worker` (app/worker.py, a Prefect process worker) for each flow run of the pool, as
`python -m flows.measurement` in a process of its own: it claims the job in the store (a job is measured once,
however often Prefect hands it out), takes a slot of the worker's, trains and predicts in this machine's sandbox
while it beats, and writes its answer to the store, where the coordinator takes it. A refusal is an answer too: the
job is not for this worker's files or slots.
"""

from __future__ import annotations

import os
import threading
from uuid import UUID

from prefect import flow, get_run_logger

from infra.pool.measurement import measure_job
from infra.pool.protocol import PoolJob
from infra.pool.worker_setup import WorkerSetup
from infra.store import Store

BEAT_S = 5.0  # how often a running job says it is alive (the coordinator gives up after POOL_SILENCE_S)
MEASUREMENT_ENTRYPOINT = "flows.measurement:measurement"  # a module path: each worker imports its own checkout
FLOW_RUN_ENV = "PREFECT__FLOW_RUN_ID"


@flow(name="measurement", log_prints=True, retries=0)
def measurement(job: str) -> str:
    """Measure one job (its JSON) and store the answer; returns a line saying how it went."""
    logger = get_run_logger()
    setup = WorkerSetup.from_env()
    parsed = PoolJob.model_validate_json(job)  # a malformed job fails the flow run: nothing is claimed
    store = Store(setup.db_url, upgrade=False)  # a worker never migrates: a schema not its code's is refused
    if not store.claim_pool_job(parsed.job_id, setup.name):
        return f"job {parsed.job_id}: claimed already by another worker; not measured twice"
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(BEAT_S):
            store.beat_pool_job(parsed.job_id, setup.name)

    beating = threading.Thread(target=beat, name="pool-beat", daemon=True)
    beating.start()
    try:
        with setup.slot() as slot:
            logger.info(f"job {parsed.job_id}: iteration {parsed.iteration} seed {parsed.seed} in {slot.describe()}")
            answer = measure_job(parsed, setup.home / "runs", slot, setup.name, setup.cpu_threads)
    finally:
        stop.set()
        beating.join()
    result = answer.result
    store.answer_pool_job(parsed.job_id, setup.name, result.model_dump_json().encode(), answer.model)
    line = f"job {parsed.job_id}: " + (
        f"refused: {result.refused}" if result.refused else f"{result.status} ({result.reason}), epochs {result.epochs}"
    )
    logger.info(line)
    return line


def run_flow_run() -> None:
    """A worker's process for one flow run (app/worker.py): the measurement flow, never the code a deployment names,
    on the flow run's parameters."""
    from prefect.engine import handle_engine_signals
    from prefect.flow_engine import load_flow_run, run_flow

    flow_run_id = UUID(os.environ[FLOW_RUN_ENV])
    with handle_engine_signals(flow_run_id):
        run_flow(measurement, flow_run=load_flow_run(flow_run_id=flow_run_id))


if __name__ == "__main__":
    run_flow_run()
