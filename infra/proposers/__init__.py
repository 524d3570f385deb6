"""
Proposers: who writes the next train.py. One registry of the specs a user can give (--proposer):

    offline        the parametric searcher (no language model)
    optuna[:S]     Optuna over train.py's constants; S is its sampler: tpe (default), cmaes or random
    replay:DIR     the train.py files in DIR, in name order
    claude         Claude through the anthropic SDK (ANTHROPIC_API_KEY)
    openai         an OpenAI-compatible endpoint (OPENAI_BASE_URL or OPENAI_API_KEY)
    auto           claude when ANTHROPIC_API_KEY is set, else offline

`resolve_spec` checks a spec and says what it chose; `make_proposer` builds the proposer of a resolved one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from infra.proposers.base import (
    CannotFix,
    InFlight,
    Proposal,
    ProposalContext,
    Proposer,
    ProposerError,
    Revision,
    StopResearch,
)

__all__ = [
    "InFlight",
    "Proposal",
    "ProposalContext",
    "Proposer",
    "ProposerError",
    "Revision",
    "StopResearch",
    "CannotFix",
    "is_language_model",
    "make_proposer",
    "resolve_spec",
    "settles",
]


@dataclass(frozen=True)
class Kind:
    """One kind of proposer: how to check its argument and environment, and how to build one."""

    name: str
    language_model: bool  # its candidates can crash in new ways: pre-flight them by default, and ask it for fixes
    check: Callable[[str], tuple[str, str]]  # argument -> (resolved argument, what was chosen); raises ProposerError
    build: Callable[[str, str | None], Proposer]  # (resolved argument, model) -> proposer
    takes_argument: bool = False  # replay:DIR, optuna:SAMPLER
    settles: bool = False  # it is told each finished iteration's outcome (base.Settles)


def _check_offline(_argument: str) -> tuple[str, str]:
    return "", "offline parametric searcher (no LLM)"


def _check_optuna(argument: str) -> tuple[str, str]:
    from infra.proposers.optuna_search import DEFAULT_SAMPLER, SAMPLERS

    sampler = argument or DEFAULT_SAMPLER
    if sampler not in SAMPLERS:
        raise ProposerError(f"unknown Optuna sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    return sampler, f"Optuna's {sampler} sampler over train.py's UPPER_CASE constants (no LLM)"


def _check_claude(_argument: str) -> tuple[str, str]:
    if not os.environ.get("ANTHROPIC_API_KEY"):
        raise ProposerError("--proposer claude needs ANTHROPIC_API_KEY in the environment (or use --proposer offline)")
    return "", "Claude through the anthropic SDK"


def _check_openai(_argument: str) -> tuple[str, str]:
    if not os.environ.get("OPENAI_BASE_URL") and not os.environ.get("OPENAI_API_KEY"):
        raise ProposerError(
            "--proposer openai needs OPENAI_BASE_URL (a local server such as vLLM or Ollama) or OPENAI_API_KEY"
        )
    return "", f"OpenAI-compatible model at {os.environ.get('OPENAI_BASE_URL') or 'the OpenAI API'}"


def _check_replay(argument: str) -> tuple[str, str]:
    directory = Path(argument).expanduser()
    if not argument or not directory.is_dir():
        raise ProposerError(f"replay directory not found: {directory if argument else '(none given: replay:DIR)'}")
    if not sorted(directory.glob("*.py")):
        raise ProposerError(f"replay directory holds no .py files: {directory}")
    return str(directory.resolve()), f"replay of the train.py files in {directory.resolve()}"


def _offline(_argument: str, _model: str | None) -> Proposer:
    from infra.proposers.offline import OfflineProposer

    return OfflineProposer()


def _replay(argument: str, _model: str | None) -> Proposer:
    from infra.proposers.replay import ReplayProposer

    return ReplayProposer(Path(argument))


def _optuna(argument: str, _model: str | None) -> Proposer:
    from infra.proposers.optuna_search import OptunaProposer

    return OptunaProposer(argument)


def _claude(_argument: str, model: str | None) -> Proposer:
    from infra.proposers.claude import ClaudeProposer

    return ClaudeProposer(model)


def _openai(_argument: str, model: str | None) -> Proposer:
    from infra.proposers.openai_compat import OpenAICompatProposer

    return OpenAICompatProposer(model)


REGISTRY = {
    kind.name: kind
    for kind in (
        Kind("offline", False, _check_offline, _offline),
        Kind("replay", False, _check_replay, _replay, takes_argument=True),
        Kind("optuna", False, _check_optuna, _optuna, takes_argument=True, settles=True),
        Kind("claude", True, _check_claude, _claude),
        Kind("openai", True, _check_openai, _openai),
    )
}
SHOWN = {"replay": "replay:DIR", "optuna": "optuna[:tpe|cmaes|random]"}
KNOWN = "auto, " + ", ".join(SHOWN.get(name, name) for name in REGISTRY)


def _parse(spec: str) -> tuple[Kind, str]:
    name, _, argument = spec.partition(":")
    if name not in REGISTRY:
        raise ProposerError(f"unknown proposer {spec!r}: expected one of {KNOWN}")
    if argument and not REGISTRY[name].takes_argument:
        raise ProposerError(f"--proposer {name} takes no argument (got {spec!r})")
    return REGISTRY[name], argument


def resolve_spec(spec: str) -> tuple[str, str]:
    """(resolved spec, a sentence saying what was chosen and why). Raises ProposerError for bad specs."""
    if spec == "auto":
        if os.environ.get("ANTHROPIC_API_KEY"):
            return "claude", "auto: ANTHROPIC_API_KEY is set; using Claude through the anthropic SDK"
        return "offline", "auto: ANTHROPIC_API_KEY is not set; falling back to the offline parametric searcher (no LLM)"
    kind, argument = _parse(spec)
    resolved, why = kind.check(argument)
    return (f"{kind.name}:{resolved}" if resolved else kind.name), why


def is_language_model(resolved_spec: str) -> bool:
    return _parse(resolved_spec)[0].language_model


def settles(resolved_spec: str) -> bool:
    """Whether this proposer is told each finished iteration's outcome (the flow calls its settle)."""
    return _parse(resolved_spec)[0].settles


def make_proposer(resolved_spec: str, model: str | None = None) -> Proposer:
    kind, argument = _parse(resolved_spec)
    return kind.build(argument, model)
