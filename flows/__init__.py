"""Prefect flows and the `autoresearch` command line."""
