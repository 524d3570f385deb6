"""
`autoresearch worker`: a Prefect process worker that runs the measurement flow and nothing else.

Prefect's stock process worker runs what a flow run asks for: the command, the environment and the working directory
are job variables any flow run may override, and the flow is loaded from its deployment (its entrypoint and its pull
steps, one of which runs shell scripts). Anyone holding the API's credentials could thus run any command on every
worker, outside the sandbox (red team). This worker ignores all of that: each flow run it takes is started as
`python -m flows.measurement` with the worker's own environment, in a fresh temporary directory, and that process
runs the measurement flow with the flow run's parameters, whatever deployment the run names. The job inside is then
checked like any job (infra/pool/protocol.py): the worst such a run can ask for is a measured run in the sandbox.
"""

from __future__ import annotations

import asyncio
import os
import sys
import warnings
from typing import Any

from prefect.settings import PREFECT_WORKER_QUERY_SECONDS, temporary_settings
from prefect.utilities.processutils import command_to_string
from prefect.workers.process import ProcessWorker

from flows.measurement import FLOW_RUN_ENV
from infra.pool.worker_setup import WORKER_QUERY_S, WorkerSetup

with warnings.catch_warnings():  # it replaces Prefect's process worker in this process's registry, on purpose
    warnings.simplefilter("ignore", UserWarning)

    class MeasurementWorker(ProcessWorker):
        type = "process"

        async def run(self, flow_run: Any, configuration: Any, task_status: Any = None) -> Any:
            configuration.env = {**os.environ, FLOW_RUN_ENV: str(flow_run.id)}
            configuration.command = command_to_string([sys.executable, "-m", "flows.measurement"])
            configuration._command_configured = True  # the plain engine starter: no workspace, no pull steps
            configuration.working_dir = None
            return await super().run(flow_run, configuration, task_status)


def serve(setup: WorkerSetup) -> None:
    """Take measurement flow runs from setup.pool until stopped (Ctrl-C, SIGTERM)."""
    os.environ.update(setup.to_env())

    async def poll() -> None:
        async with MeasurementWorker(work_pool_name=setup.pool, name=setup.name, limit=setup.slots) as worker:
            await worker.start(printer=print)

    with temporary_settings(updates={PREFECT_WORKER_QUERY_SECONDS: WORKER_QUERY_S}):
        try:
            asyncio.run(poll())
        except KeyboardInterrupt:
            print(f"worker {setup.name}: stopped")
