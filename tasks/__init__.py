"""Prefect tasks, one per step of an iteration: propose, train, evaluate, decide, revise strategy."""

import infra  # noqa: F401  (Prefect's offline settings, before any task imports prefect)
