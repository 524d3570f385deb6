"""
Fault injection for the chaos tests: AUTORESEARCH_FAILPOINT=name:iteration makes this
process SIGKILL itself at that point. Unset (always, outside tests) it does nothing.

Points: propose, train (while the candidate trains), decided (after the decision,
before the store write), recorded (after the store write, before the git commit).
"""

from __future__ import annotations

import os
import signal

ENV = "AUTORESEARCH_FAILPOINT"


def failpoint(name: str, iteration: int) -> None:
    if os.environ.get(ENV) == f"{name}:{iteration}":
        os.kill(os.getpid(), signal.SIGKILL)
