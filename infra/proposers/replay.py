"""
The replay proposer: the train.py files in a directory, in name order, one per iteration.

Re-runs a research history on other hardware (do its decisions hold there?), checks a
known-good recipe, and lets tests drive the loop with exact candidates. The hypothesis
is the file's first comment line. A candidate that crashes its pre-flight is not fixed
(the files cannot change): the iteration is recorded as failed and the replay goes on.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from infra.proposers.base import CannotFix, Proposal, ProposalContext, Revision
from infra.records import ChangeType, Verdict
from infra.research.code_edit import MAX_CODE_BYTES, classify_change


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
        """The next file, read as bytes up to the code cap and decoded strictly (the intake checks the rest)."""
        if ctx.iteration > len(self.files):
            return None
        path = self.files[ctx.iteration - 1]
        with open(path, "rb") as f:
            data = f.read(MAX_CODE_BYTES + 1)
        failed = Proposal(hypothesis=f"replay of {path.name}", change_type=ChangeType.UNKNOWN, code=ctx.incumbent_code)
        if len(data) > MAX_CODE_BYTES:
            return replace(failed, error=f"{path.name} is larger than {MAX_CODE_BYTES // 1024} KiB")
        try:
            code = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return replace(failed, error=f"{path.name} is not UTF-8 text (byte {exc.start})")
        return Proposal(
            hypothesis=first_comment(code) or f"replay of {path.name}",
            change_type=classify_change(ctx.incumbent_code, code),
            code=code,
        )

    def revise_strategy(self, ctx: ProposalContext) -> Revision:
        kept = [h for h in ctx.history if h.verdict == Verdict.KEEP]
        text = (
            f"Replay of {len(self.files)} fixed candidates; nothing to revise. "
            f"After iteration {ctx.iteration - 1}: {len(kept)} kept.\n"
        )
        return Revision(text, "; ".join(f"iteration {h.iteration}: {h.hypothesis}" for h in kept) or "none kept")
