"""Proposers: who writes the next train.py. `make_proposer` turns a --proposer spec into one."""

from __future__ import annotations

import os
from pathlib import Path

from infra.proposers.base import Proposal, ProposalContext, Proposer, ProposerError, StopResearch
from infra.proposers.offline import OfflineProposer
from infra.proposers.replay import ReplayProposer

__all__ = ["LLM_SPECS", "Proposal", "ProposalContext", "Proposer", "ProposerError", "StopResearch", "make_proposer",
           "resolve_spec"]

KNOWN = "auto, offline, claude, openai, replay:DIR"


LLM_SPECS = ("claude", "openai")


def resolve_spec(spec: str) -> tuple[str, str]:
    """(resolved spec, a sentence saying what was chosen and why). Raises ProposerError for bad specs."""
    if spec == "auto":
        if os.environ.get("ANTHROPIC_API_KEY"):
            return "claude", "auto: ANTHROPIC_API_KEY is set; using Claude through the anthropic SDK"
        return "offline", "auto: ANTHROPIC_API_KEY is not set; falling back to the offline parametric searcher (no LLM)"
    if spec == "offline":
        return spec, "offline parametric searcher (no LLM)"
    if spec == "claude":
        if not os.environ.get("ANTHROPIC_API_KEY"):
            raise ProposerError("--proposer claude needs ANTHROPIC_API_KEY in the environment (or use --proposer offline)")
        return spec, "Claude through the anthropic SDK"
    if spec == "openai":
        if not os.environ.get("OPENAI_BASE_URL") and not os.environ.get("OPENAI_API_KEY"):
            raise ProposerError("--proposer openai needs OPENAI_BASE_URL (a local server such as vLLM or Ollama) "
                                "or OPENAI_API_KEY")
        return spec, f"OpenAI-compatible model at {os.environ.get('OPENAI_BASE_URL') or 'the OpenAI API'}"
    if spec.startswith("replay:"):
        directory = Path(spec[len("replay:"):]).expanduser()
        if not directory.is_dir():
            raise ProposerError(f"replay directory not found: {directory}")
        if not sorted(directory.glob("*.py")):
            raise ProposerError(f"replay directory holds no .py files: {directory}")
        return f"replay:{directory.resolve()}", f"replay of the train.py files in {directory.resolve()}"
    raise ProposerError(f"unknown proposer {spec!r}: expected one of {KNOWN}")


def make_proposer(resolved_spec: str, model: str | None = None) -> Proposer:
    if resolved_spec == "offline":
        return OfflineProposer()
    if resolved_spec == "claude":
        from infra.proposers.claude import ClaudeProposer

        return ClaudeProposer(model)
    if resolved_spec == "openai":
        from infra.proposers.openai_compat import OpenAICompatProposer

        return OpenAICompatProposer(model)
    if resolved_spec.startswith("replay:"):
        return ReplayProposer(Path(resolved_spec[len("replay:"):]))
    raise ProposerError(f"unknown proposer {resolved_spec!r}: expected one of {KNOWN}")
