"""
The PostgreSQL grants of a pool worker's own database role: what `autoresearch db worker-grants ROLE` prints.

A worker (infra/pool/, flows/measurement.py) reads the schema's revision and claims, beats and answers jobs in
`pool_jobs`; nothing else. With the coordinator's own user it could write any table (forge a measured run); with
this role it cannot. The role itself (and its password) is the operator's: `CREATE ROLE ROLE LOGIN PASSWORD '...'`.
"""

from __future__ import annotations

import re

ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")  # quoted below all the same: a reserved word is still a name


def worker_grants(role: str) -> list[str]:
    """The statements that let role do a worker's part of the store, and no more (run them as the store's owner).
    PostgreSQL before 15 lets every role create tables in schema public: that is taken back from all but the owner."""
    if not ROLE_NAME.fullmatch(role):
        raise ValueError(f"role {role!r}: lower-case letters, digits and _, starting with a letter or _ (at most 63)")
    if role == "public" or role.startswith("pg_"):
        raise ValueError(f"role {role!r}: PUBLIC (every role) or one of PostgreSQL's own: name the workers' role")
    quoted = f'"{role}"'
    return [
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
        f"GRANT USAGE ON SCHEMA public TO {quoted};",
        f"GRANT SELECT ON alembic_version TO {quoted};",
        f"GRANT SELECT, INSERT, UPDATE ON pool_jobs TO {quoted};",
    ]
