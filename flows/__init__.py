"""Prefect flows: the research loop."""

import infra  # noqa: F401  (Prefect's offline settings, before any flow imports prefect)
