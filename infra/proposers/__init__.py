"""Proposers: who writes the next train.py. `make_proposer` turns a --proposer spec into one."""

from __future__ import annotations

import os
from pathlib import Path

from infra.proposers.base import Proposal, ProposalContext, Proposer, ProposerError
from infra.proposers.offline import OfflineProposer
from infra.proposers.replay import ReplayProposer

__all__ = ["Proposal", "ProposalContext", "Proposer", "ProposerError", "make_proposer", "resolve_spec"]

KNOWN = "auto, offline, claude, openai, replay:DIR"


def resolve_spec(spec: str) -> tuple[str, str]:
    """(resolved spec, a sentence saying what was chosen and why). Raises ProposerError for bad specs."""
    if spec == "auto":
        if os.environ.get("ANTHROPIC_API_KEY"):
            return "offline", ("auto: ANTHROPIC_API_KEY is set, but the Claude proposer is not part of this "
                               "version yet; using the offline parametric searcher")
        return "offline", "auto: ANTHROPIC_API_KEY is not set; using the offline parametric searcher"
    if spec == "offline":
        return spec, "offline parametric searcher (no LLM)"
    if spec == "claude":
        if not os.environ.get("ANTHROPIC_API_KEY"):
            raise ProposerError("--proposer claude needs ANTHROPIC_API_KEY in the environment")
        raise ProposerError("the Claude proposer is not part of this version yet; use --proposer offline or replay:DIR")
    if spec == "openai":
        raise ProposerError("the OpenAI-compatible proposer is not part of this version yet; use offline or replay:DIR")
    if spec.startswith("replay:"):
        directory = Path(spec[len("replay:"):]).expanduser()
        if not directory.is_dir():
            raise ProposerError(f"replay directory not found: {directory}")
        if not sorted(directory.glob("*.py")):
            raise ProposerError(f"replay directory holds no .py files: {directory}")
        return f"replay:{directory.resolve()}", f"replay of the train.py files in {directory.resolve()}"
    raise ProposerError(f"unknown proposer {spec!r}: expected one of {KNOWN}")


def make_proposer(resolved_spec: str) -> Proposer:
    if resolved_spec == "offline":
        return OfflineProposer()
    if resolved_spec.startswith("replay:"):
        return ReplayProposer(Path(resolved_spec[len("replay:"):]))
    raise ProposerError(f"unknown proposer {resolved_spec!r}: expected one of {KNOWN}")
