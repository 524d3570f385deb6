"""TRANSITIONAL: the start-up allowance is now measured with the export allowance, in infra/sandbox/allowances.py.
This name stays until flows/research.py and infra/cli.py call measure_allowances from there."""

from infra.sandbox.allowances import allowance_for, measure_startup_allowance  # noqa: F401
