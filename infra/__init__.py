"""
What the Prefect tasks stand on: settings, the sandbox, the results store, the research core, the proposers.

Importing this package applies Prefect's settings for an offline machine (infra/prefect_env.py) before
anything imports prefect: flows/ and tasks/ import it first, so no module has to do it itself.
"""

from infra.prefect_env import apply_offline_defaults

apply_offline_defaults()
