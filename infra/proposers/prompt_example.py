"""
One whole propose request as the model sees it, built by the code that builds the real ones.

    python -m infra.proposers.prompt_example            print it
    python -m infra.proposers.prompt_example --docs     rewrite docs/agent.md's "What the model sees" block

The example context is fixed (the baseline train.py, the repository's program.md, a two-row history,
a two-core CPU), so the output changes only when the prompt code, prepare.py's API doc, the
acceptance rule's doc, baseline/train.py or program.md change; tests/test_llm_proposers.py checks
that the docs/agent.md block is this output.
"""

from __future__ import annotations

import json
import sys

from infra.proposers.base import Hardware, ProposalContext
from infra.proposers.prompt import Prompt, estimated_tokens, prompt, propose_task
from infra.proposers.tool_schema import TOOLS
from infra.records import ChangeType, DecisionRecord, IterationRecord, MeasuredRun, Status, Verdict
from infra.research.acceptance_rule import Floor, RuleConfig, bar, step, summary
from infra.research.program import read_program
from infra.sandbox.compute_record import ComputeRecord
from infra.settings import BASELINE_TRAIN_PY, REPO_ROOT

PAGE = REPO_ROOT / "docs" / "agent.md"
START, END = "<!-- prompt-example:start -->", "<!-- prompt-example:end -->"
FENCE = "`````"  # longer than any fence inside the prompt (train.py is shown in ``` blocks)


def _compute(cpu_seconds: float, wall_seconds: float, free_cores: float) -> ComputeRecord:
    """A compute record (fixed numbers, so the example is reproducible)."""
    return ComputeRecord(
        clock="cpu",
        threads=1,
        cpu_seconds=cpu_seconds,
        wall_seconds=wall_seconds,
        core_share=round(cpu_seconds / wall_seconds, 3),
        waiting_share=0.01,
        free_cores=free_cores,
        load_start=1.0,
        load_end=1.1,
    )


def _run(
    seq: int, iteration: int, seed: int, acc: float, epochs: int, seconds: float, compute: ComputeRecord
) -> MeasuredRun:
    return MeasuredRun(
        seq, iteration, iteration, seed, Status.OK, acc, epochs=epochs, train_seconds=seconds, compute=compute
    )


def example_context() -> ProposalContext:
    """Iteration 2 of a CPU experiment: the baseline measured twice; a candidate fixed at pre-flight, promising on its
    first run, discarded after its second."""
    baseline_scores = [0.8391, 0.8419]
    rule = RuleConfig()
    floor = Floor(rule.prior_sigma, rule.prior_dof, pooled=False)  # the baseline's two runs: the prior still rules
    momentum_scores = [0.8470, 0.8362]  # a promising first run, a second that was not
    close_call = step(baseline_scores, momentum_scores, floor, rule)
    assert close_call.verdict == Verdict.DISCARD, summary(close_call)
    baseline = IterationRecord(
        iteration=0,
        status=Status.OK,
        verdict=Verdict.BASELINE,
        val_accuracy=0.8405,
        measurements=baseline_scores,
        change_type=ChangeType.BASELINE,
        hypothesis="baseline",
        epochs=14,
        train_seconds=119.2,
        finished=True,
        runs=[
            _run(1, 0, 0, 0.8391, 14, 119.2, _compute(127.9, 130.6, 1.7)),
            _run(2, 0, 1, 0.8419, 14, 118.8, _compute(127.6, 130.2, 1.8)),
        ],
    )
    momentum = IterationRecord(
        iteration=1,
        status=Status.OK,
        verdict=close_call.verdict,
        val_accuracy=close_call.candidate_mean,
        measurements=momentum_scores,
        change_type=ChangeType.PARAMETRIC,
        hypothesis="SGD momentum 0.9 with lr 0.02 averages the noisy batch-32 gradients",
        expected_effect="+1.5 points, the same 14 epochs",
        epochs=14,
        train_seconds=119.5,
        decision=DecisionRecord(summary=summary(close_call), delta=close_call.delta),
        runs=[
            _run(3, 1, 1000, 0.8470, 14, 119.5, _compute(128.3, 131.0, 1.7)),
            _run(4, 1, 1001, 0.8362, 14, 119.1, _compute(128.0, 130.8, 1.6)),
        ],
        attempts=[
            {
                "attempt": 0,
                "note": "SGD momentum 0.9 with lr 0.02",
                "status": "crashed",
                "reason": "NameError: name 'MOMENTUM_' is not defined",
            },
            {"attempt": 1, "note": "fixed: the constant's name", "status": "ok", "reason": "ok"},
        ],
        finished=True,
    )
    return ProposalContext(
        iteration=2,
        incumbent_code=BASELINE_TRAIN_PY.read_text(),
        strategy="",
        program=read_program(REPO_ROOT / "program.md"),
        incumbent=baseline,
        rule=rule,
        bar=bar(baseline_scores, floor, rule),
        history=[baseline, momentum],
        hardware=Hardware(
            device="cpu",
            budget_s=120.0,
            startup_allowance_s=8.0,
            export_allowance_s=4.8,
            inference_allowance_s=10.0,
            cpu_threads=1,
            cpu_cores=2,
            usable_cores=2,
            memory_cap_gib=3.9,
        ),
    )


def example_prompt() -> Prompt:
    ctx = example_context()
    return prompt(ctx, propose_task(ctx))


def render(request: Prompt) -> str:
    """The request's parts in the order the API reads them, each headed by where it goes and whether it is cached."""
    cached_chars = len(json.dumps(TOOLS)) + len(request.fixed)
    parts = [
        ("tools (both on every call; tool_choice forces propose_train_py here)", json.dumps(TOOLS, indent=1)),
        (
            f"system 1: the fixed text [cache breakpoint; with the tools {cached_chars:,} chars, about "
            f"{cached_chars // 4:,} tokens at 4 chars per token]",
            request.fixed,
        ),
        ("system 2: program.md [cache breakpoint]", request.program),
        ("user 1: the incumbent [cache breakpoint]", request.incumbent),
        ("user 2: the situation [cache breakpoint]", request.situation),
        ("user 3: the task (not cached)", request.task),
    ]
    return "\n\n".join(f"======== {title} ========\n\n{text}" for title, text in parts)


def page_block() -> str:
    return f"{START}\n{FENCE}text\n{render(example_prompt())}\n{FENCE}\n{END}"


def write_page() -> None:
    text = PAGE.read_text()
    start, end = text.index(START), text.index(END) + len(END)
    PAGE.write_text(text[:start] + page_block() + text[end:])


def main() -> None:
    if "--docs" in sys.argv[1:]:
        write_page()
        print(f"rewrote the prompt example in {PAGE}")
    else:
        print(render(example_prompt()))
        request = example_prompt()
        print(
            f"\n(fixed text: {len(request.fixed):,} chars, about {estimated_tokens(request.fixed):,} tokens)",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
