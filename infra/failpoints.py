"""
Fault injection for the chaos tests: AUTORESEARCH_FAILPOINT=name:iteration makes this
process SIGKILL itself at that point. Unset (always, outside tests) it does nothing.

`raise-once:name:iteration` raises instead, once per process: a transient failure that a
Prefect flow retry must recover from.

Points: propose, train (while the candidate trains), decided (after the decision,
before the store write), recorded (after the store write, before the git commit),
asked (the optuna proposer: a trial asked for, its iteration not stored yet).
"""

from __future__ import annotations

import os
import signal

ENV = "AUTORESEARCH_FAILPOINT"


_fired: set[str] = set()


class InjectedFailure(RuntimeError):
    """Raised by a raise-once failpoint."""


def failpoint(name: str, iteration: int) -> None:
    wanted = os.environ.get(ENV, "")
    if wanted == f"{name}:{iteration}":
        os.kill(os.getpid(), signal.SIGKILL)
    if wanted == f"raise-once:{name}:{iteration}" and wanted not in _fired:
        _fired.add(wanted)
        raise InjectedFailure(f"injected failure at {name} of iteration {iteration}")
