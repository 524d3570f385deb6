"""
The replay proposer: the train.py files in a directory, in name order, one per iteration.

Re-runs a research history on other hardware (do its decisions hold there?), checks a
known-good recipe, and lets tests drive the loop with exact candidates. The hypothesis
is the file's first comment line. A candidate that crashes its pre-flight is not fixed
(the files cannot change): the iteration is recorded as failed and the replay goes on.
"""

from __future__ import annotations

from pathlib import Path

from infra.proposers.base import CannotFix, Proposal, ProposalContext, Revision
from infra.records import Verdict
from infra.research.code_edit import classify_change


def first_comment(code: str) -> str:
    for line in code.splitlines():
        if line.strip().startswith("#"):
            return line.strip().lstrip("#").strip()
    return ""


class ReplayProposer(CannotFix):
    name = "replay"

    def __init__(self, directory: Path):
        self.files = sorted(Path(directory).glob("*.py"))

    def propose(self, ctx: ProposalContext) -> Proposal | None:
        if ctx.iteration > len(self.files):
            return None
        path = self.files[ctx.iteration - 1]
        code = path.read_text()
        return Proposal(hypothesis=first_comment(code) or f"replay of {path.name}",
                        change_type=classify_change(ctx.incumbent_code, code), code=code)

    def revise_strategy(self, ctx: ProposalContext) -> Revision:
        kept = [h for h in ctx.history if h.decision == Verdict.KEEP]
        text = (f"Replay of {len(self.files)} fixed candidates; nothing to revise. "
                f"After iteration {ctx.iteration - 1}: {len(kept)} kept.\n")
        return Revision(text, "; ".join(f"iteration {h.iteration}: {h.hypothesis}" for h in kept) or "none kept")
