"""
The flow a deployment runs (`autoresearch deploy`, app/deployments.py): the experiment's name is its only
parameter; everything else comes from the store.

The Prefect API lets whoever holds its credentials start a deployment's run with other parameters. A
run that took its configuration from them could be handed another runs home (a directory of links), a
replay proposer reading someone's directory, a permissive rule. So a scheduled run trusts only its serving
process: `deploy` puts the experiment it serves, the runs home and the store in the environment of the
serving process (inherited by each flow-run subprocess, out of reach of the API), and stores the
configuration it was given with the experiment (`experiments.deployed_config`). A run asked for any other
experiment is refused with a message saying so, before it touches anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow

from flows.research import run_experiment
from infra import operator_files, settings
from infra.experiment_config import ExperimentConfig
from infra.store import Store, results_db_url

DEPLOYED_EXPERIMENT_ENV = "AUTORESEARCH_DEPLOYED_EXPERIMENT"  # set by `deploy` in its serving process


class DeploymentRefused(RuntimeError):
    """A deployment's run was asked for something its serving process does not serve."""


def deployed_config(experiment: str) -> ExperimentConfig:
    """The stored configuration of the experiment this process serves; DeploymentRefused for any other."""
    served = os.environ.get(DEPLOYED_EXPERIMENT_ENV)
    if served is None:
        raise DeploymentRefused("this flow runs only under `autoresearch deploy`, which sets the experiment it serves")
    if experiment != served:
        raise DeploymentRefused(
            f"this deployment serves experiment {served!r}; its runs take no other experiment "
            f"and no other parameter (asked for {experiment!r}). Change what a deployment runs "
            f"with `autoresearch deploy`"
        )
    home = settings.runs_home()
    operator_files.operator_dir(home, create=False)
    store = Store(results_db_url(home))
    exp = store.experiment(served)
    if exp is None or exp.deployed_config is None:
        raise DeploymentRefused(
            f"experiment {served!r} has no deployed configuration in {store.url}: run "
            f"`autoresearch deploy --experiment {served} ...` again"
        )
    config = ExperimentConfig(**exp.deployed_config)
    if Path(config.home) != home or config.db_url != store.url:
        raise DeploymentRefused(
            f"experiment {served!r}'s deployed configuration names another runs home or store "
            f"({config.home}, {config.db_url}) than its serving process ({home}, {store.url})"
        )
    return config


@flow(
    name="research",
    flow_run_name="research-{experiment}",
    log_prints=True,
    retries=1,
    retry_delay_seconds=10,
    persist_result=False,
)
def scheduled_research(experiment: str) -> dict[str, Any]:
    """A scheduled run of one experiment: resume it with the configuration `deploy` stored for it."""
    operator_files.private_umask()
    return run_experiment(deployed_config(experiment))
