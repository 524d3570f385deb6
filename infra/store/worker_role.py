"""
The PostgreSQL grants of a pool worker's own database role: what `autoresearch db worker-grants ROLE` prints.

A worker (infra/pool/, flows/measurement.py) reads the schema's revision and claims, beats and answers jobs in
`pool_jobs`; nothing else. With the coordinator's own user it could write any table (forge a measured run); with
this role it cannot. The role itself (and its password) is the operator's: `CREATE ROLE ROLE LOGIN PASSWORD '...'`.
"""

from __future__ import annotations

import re

ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")  # a PostgreSQL identifier that needs no quoting


def worker_grants(role: str) -> list[str]:
    """The statements that let role do a worker's part of the store, and no more (run them as the store's owner)."""
    if not ROLE_NAME.fullmatch(role):
        raise ValueError(f"role {role!r}: lower-case letters, digits and _, starting with a letter or _ (at most 63)")
    return [
        f"GRANT USAGE ON SCHEMA public TO {role};",
        f"GRANT SELECT ON alembic_version TO {role};",
        f"GRANT SELECT, INSERT, UPDATE ON pool_jobs TO {role};",
    ]
