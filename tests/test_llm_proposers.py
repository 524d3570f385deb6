"""The Claude and OpenAI-compatible proposers through their real SDKs, against local fake servers."""

from __future__ import annotations

import pytest

from infra.proposers import Proposal, ProposalContext, ProposerError, make_proposer, resolve_spec
from infra.proposers.base import Hardware
from infra.proposers.llm import SpendingCapReached
from infra.proposers.pricing import DEFAULT_PRICES, Usage, cost_usd
from infra.proposers.prompt import MIN_CACHEABLE_TOKENS, estimated_tokens
from infra.proposers.prompt_text import FIXED_TEXT
from infra.proposers.situation import hardware_text
from infra.proposers.tool_schema import TOOLS, InvalidProposal, apply_edits
from infra.records import DecisionRecord, MeasuredRun, Status
from infra.research.acceptance_rule import Floor, RuleConfig, Stop, bar, step, summary
from infra.research.code_edit import set_constants
from infra.research.program import read_program, with_strategy
from infra.sandbox.compute_record import ComputeRecord, compute_record
from infra.settings import BASELINE_TRAIN_PY, REPO_ROOT
from tests.conftest import record
from tests.fake_llm import USAGE, FakeLLMServer, anthropic_error, anthropic_tool_use, openai_function_call, request_text

BASELINE = BASELINE_TRAIN_PY.read_text()
STRATEGY = "Try Adam before anything structural."
PROGRAM = with_strategy(read_program(REPO_ROOT / "program.md"), STRATEGY)
KEY = "sk-ant-test-SECRET-0123456789"
ADAM_EDIT = {
    "hypothesis": "Adam at lr 1e-3 converges faster than plain SGD in a short budget",
    "change_type": "structural",
    "expected_effect": "+2 points",
    "edits": [
        {"search": "LEARNING_RATE = 0.1", "replace": "LEARNING_RATE = 0.001"},
        {
            "search": "torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM, "
            "weight_decay=WEIGHT_DECAY)",
            "replace": "torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)",
        },
    ],
}
ADAM = apply_edits(BASELINE, ADAM_EDIT["edits"])

QUIET = compute_record(
    1,
    cpu_seconds=128.0,
    wall_seconds=131.0,
    run_delay_seconds=0.5,
    others_busy_seconds=40.0,
    cores=2,
    load_start=1.0,
    load_end=1.2,
    stopped_by_wall_ceiling=False,
)
BUSY = compute_record(
    1,
    cpu_seconds=61.0,
    wall_seconds=150.0,
    run_delay_seconds=80.0,
    others_busy_seconds=260.0,
    cores=2,
    load_start=3.0,
    load_end=3.5,
    stopped_by_wall_ceiling=True,
)


def run(
    seed: int, status: str, acc: float | None, epochs: int, seconds: float, compute: ComputeRecord = QUIET
) -> MeasuredRun:
    return MeasuredRun(0, 0, 0, seed, Status(status), acc, epochs=epochs, train_seconds=seconds, compute=compute)


BASELINE_SCORES = [0.8391, 0.8419]
FLOOR = Floor(0.005, 2.0, pooled=False)
CLOSE_CALL = step(BASELINE_SCORES, [0.8555, 0.8530], FLOOR)  # a second run, then undecided
assert CLOSE_CALL.stop == Stop.MORE
BAR = bar(BASELINE_SCORES, FLOOR)
BASELINE_ROW = record(
    **{
        "iteration": 0,
        "status": "ok",
        "verdict": "baseline",
        "val_accuracy": 0.8405,
        "measurements": BASELINE_SCORES,
        "change_type": "baseline",
        "hypothesis": "baseline",
        "epochs": 14,
        "train_seconds": 119.2,
        "decision": DecisionRecord(),
        "attempts": [],
        "runs": [run(0, "ok", 0.8391, 14, 119.2), run(1, "ok", 0.8419, 14, 118.8)],
    }
)
HISTORY = [
    BASELINE_ROW,
    record(
        **{
            "iteration": 1,
            "status": "timeout",
            "verdict": "discard",
            "val_accuracy": None,
            "measurements": [],
            "change_type": "structural",
            "hypothesis": "a CNN",
            "epochs": 3,
            "train_seconds": 139.5,
            "reason": "killed (SIGKILL) after 149.5 CPU s: still running 10 s past its deadline",
            "decision": DecisionRecord(),
            "attempts": [
                {"attempt": 0, "note": "a CNN", "status": "crashed", "reason": "RuntimeError: shapes"},
                {"attempt": 1, "note": "fixed: flatten before the linear layer", "status": "ok", "reason": "ok"},
            ],
            "runs": [run(1000, "timeout", None, 3, 139.5)],
            "log_tail": "epoch 3 train_loss 0.41\nkilled",
        }
    ),
    record(
        **{
            "iteration": 2,
            "status": "ok",
            "verdict": "discard",
            "val_accuracy": CLOSE_CALL.candidate_mean,
            "measurements": [0.8555, 0.8530],
            "change_type": "parametric",
            "hypothesis": "lower lr",
            "expected_effect": "+1 point",
            "epochs": 13,
            "train_seconds": 117.0,
            "decision": DecisionRecord(summary=summary(CLOSE_CALL), delta=CLOSE_CALL.delta),
            "attempts": [{"attempt": 0, "note": "lower lr", "status": "ok", "reason": "ok"}],
            "runs": [run(2000, "ok", 0.8555, 13, 117.0), run(2001, "ok", 0.8530, 12, 118.1, BUSY)],
        }
    ),
]
HARDWARE = Hardware(
    device="cpu",
    budget_s=120,
    startup_allowance_s=8,
    export_allowance_s=5,
    inference_allowance_s=10,
    cpu_cores=2,
    usable_cores=2,
    memory_cap_gib=3.9,
    cpu_threads=1,
)


def ctx(**kw) -> ProposalContext:
    base = dict(
        iteration=4,
        incumbent_code=BASELINE,
        strategy=STRATEGY,
        program=PROGRAM,
        incumbent=BASELINE_ROW,
        rule=RuleConfig(),
        bar=BAR,
        history=HISTORY,
        hardware=HARDWARE,
    )
    base.update(kw)
    return ProposalContext(**base)


@pytest.fixture
def claude_env(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)

    def point_at(server: FakeLLMServer) -> None:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)

    return point_at


def test_request_carries_program_rule_history_hardware_and_cache_control(claude_env):
    with FakeLLMServer(lambda path, body: (200, anthropic_tool_use("propose_train_py", ADAM_EDIT))) as server:
        claude_env(server)
        proposal = make_proposer("claude").propose(ctx())
    assert proposal.error == "" and "torch.optim.Adam" in proposal.code and "LEARNING_RATE = 0.001" in proposal.code
    assert proposal.change_type == "structural" and proposal.expected_effect == "+2 points"
    body = server.requests[0]
    assert body["model"] == "claude-sonnet-4-6"
    assert [t["name"] for t in body["tools"]] == ["propose_train_py", "revise_strategy"]
    assert body["tool_choice"] == {"type": "tool", "name": "propose_train_py"}
    fixed, program = body["system"]
    assert fixed["cache_control"] == program["cache_control"] == {"type": "ephemeral"}
    assert (
        "load_split" in fixed["text"] and "TrainingBudget" in fixed["text"] and "raw pixels in [0, 1]" in fixed["text"]
    )
    # the whole program.md, Goal and Rules included, reaches the model; its rules are not restated elsewhere
    assert "## Goal" in program["text"] and "## Rules" in program["text"] and STRATEGY in program["text"]
    assert "Raise validation accuracy on Fashion-MNIST" in program["text"]
    assert "Edit train.py only" in program["text"] and "Edit train.py only" not in fixed["text"]
    incumbent, situation, task = body["messages"][0]["content"]
    assert (
        incumbent["cache_control"] == situation["cache_control"] == {"type": "ephemeral"}
        and "cache_control" not in task
    )
    assert "LEARNING_RATE = 0.1" in incumbent["text"] and "Propose iteration 4" in task["text"]
    text = situation["text"]
    # the margins a candidate must beat now, from the rule itself
    assert "0.8391, 0.8419; reference mean 0.8405" in text
    assert f"A first run below {BAR.mean + BAR.continue_above:.4f}" in text
    assert (
        f"{BAR.keep_at_min * 100:.2f} points after 2 runs" in text
        and f"{BAR.keep_at_max * 100:.2f} points after 8" in text
    )
    # each history row: its decision's numbers in the one form every reader shows, epochs and seconds, how it ended
    assert f"discard: {summary(CLOSE_CALL)}" in text and "sure, 2 runs (incumbent 2)" in text
    assert "| 14 | 119.2 | 8.51 |" in text and "| 3 | 139.5 | 46.50 |" in text and "| 13 | 117.0 | 9.00 |" in text
    assert (
        "seed 2001: stopped itself at an epoch boundary, val_accuracy 0.8530; 12 epochs in 118.1 s (9.84 s per epoch)"
        in text
    )
    assert (
        "seed 1000: killed at the deadline (timeout); 3 epochs in 139.5 s" in text and "10 s past its deadline" in text
    )
    assert "attempt 0 crashed: RuntimeError: shapes; attempt 1 (fix: fixed: flatten before the linear layer) ok" in text
    assert "expected: +1 point" in text
    # the device facts, and that the latest measurement was taken under load
    assert "device cpu; training budget 120 s of CPU time on 1 allotted cores" in text
    assert "2 CPU cores (2 usable by the sandbox); memory cap per candidate 3.9 GiB" in text
    assert "latest measured run (iteration 2, seed 2001) had 0.3 cores left free" in text and "CONTENDED" in text
    headers = {k.lower(): v for k, v in server.headers[0].items()}
    assert KEY in headers.get("x-api-key", "") + headers.get("authorization", "")  # the key goes to the API only


def test_gpu_facts_are_stated():
    text = hardware_text(
        Hardware(
            device="cuda",
            device_name="NVIDIA H100 80GB HBM3",
            device_memory_gib=79.1,
            budget_s=120,
            cpu_threads=None,
            cpu_cores=16,
            usable_cores=16,
            memory_cap_gib=62.9,
        )
    )
    assert "device cuda (NVIDIA H100 80GB HBM3, 79.1 GiB)" in text and "of wall time" in text
    assert "16 CPU cores" in text and "62.9 GiB" in text


def test_the_fixed_prefix_is_long_enough_to_cache():
    # the text every call shares, before program.md: cached only from MIN_CACHEABLE_TOKENS on (chars / 4 is generous
    # to the count for code and English alike, so the real prefix, tools included, is longer still)
    assert estimated_tokens(FIXED_TEXT) >= MIN_CACHEABLE_TOKENS
    assert estimated_tokens(FIXED_TEXT + str(TOOLS)) >= 1.5 * MIN_CACHEABLE_TOKENS


def crashed_candidate() -> Proposal:
    return Proposal(hypothesis="Adam", change_type="structural", code=ADAM.replace("BATCH_SIZE = 32", "BATCH_SIZE = 0"))


FIX = {
    "hypothesis": "fixed: a positive batch size",
    "change_type": "parametric",
    "expected_effect": "runs",
    "edits": [{"search": "BATCH_SIZE = 0", "replace": "BATCH_SIZE = 64"}],
}


def test_propose_then_fix_reads_the_shared_prefix_from_the_cache(claude_env):
    answers = [anthropic_tool_use("propose_train_py", ADAM_EDIT), anthropic_tool_use("propose_train_py", FIX)]
    with FakeLLMServer(lambda path, body: (200, answers.pop(0))) as server:
        claude_env(server)
        proposer = make_proposer("claude")
        first = proposer.propose(ctx())
        fixed = proposer.fix(ctx(), crashed_candidate(), "crashed: range() arg 3 must not be zero", "ValueError")
    (propose_call,), (fix_call,) = first.calls, fixed.calls  # each result carries the calls made for it
    assert first.error == fixed.error == ""
    assert propose_call["cache_write_tokens"] > 0 and propose_call["cache_read_tokens"] == 0
    # tools, system, incumbent and situation are one prefix: the fix pays only for its task
    assert fix_call["purpose"] == "fix" and fix_call["cache_read_tokens"] >= propose_call["cache_write_tokens"]
    assert fix_call["cache_read_tokens"] == server.usages[1]["cache_read_input_tokens"]
    assert fix_call["cost_usd"] < propose_call["cost_usd"]


def test_propose_then_revise_shares_tools_and_system(claude_env):
    revised = {"strategy": "Adam next.", "lessons": "SGD tweaks are within noise"}
    answers = [anthropic_tool_use("propose_train_py", ADAM_EDIT), anthropic_tool_use("revise_strategy", revised)]
    with FakeLLMServer(lambda path, body: (200, answers.pop(0))) as server:
        claude_env(server)
        proposer = make_proposer("claude")
        proposer.propose(ctx())
        revision = proposer.revise_strategy(ctx())
        assert (revision.strategy, revision.lessons) == ("Adam next.", "SGD tweaks are within noise")
        assert [c["purpose"] for c in revision.calls] == ["revise"]  # each result carries the calls made for it
    assert server.requests[0]["tools"] == server.requests[1]["tools"]
    assert server.requests[0]["system"] == server.requests[1]["system"]
    assert proposer.calls[1]["purpose"] == "revise" and proposer.calls[1]["cache_read_tokens"] >= estimated_tokens(
        FIXED_TEXT
    )


def test_a_short_prefix_is_not_cached():
    from tests.fake_llm import PromptCache

    cache, body = (
        PromptCache(),
        {
            "model": "m",
            "system": [{"type": "text", "text": "short", "cache_control": {}}],
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert cache.usage(body, 1)["cache_creation_input_tokens"] == 0 == cache.usage(body, 1)["cache_read_input_tokens"]


def test_fix_change_type_is_measured_against_the_incumbent(claude_env):
    with FakeLLMServer(lambda path, body: (200, anthropic_tool_use("propose_train_py", FIX))) as server:
        claude_env(server)
        fixed = make_proposer("claude").fix(ctx(), crashed_candidate(), "crashed", "ValueError")
    # the edit applies to the failed candidate (its search text is only there) ...
    assert fixed.error == "" and "BATCH_SIZE = 64" in fixed.code and "torch.optim.Adam" in fixed.code
    # ... and the change is judged against the incumbent: Adam is structural, whatever the fix alone looks like
    assert fixed.change_type == "structural"
    task = server.requests[0]["messages"][0]["content"][-1]["text"]
    assert "failed a short pre-flight run" in task and "BATCH_SIZE = 0" in task


def test_missing_expected_effect_is_reasked(claude_env):
    without = {k: v for k, v in ADAM_EDIT.items() if k != "expected_effect"}
    answers = [anthropic_tool_use("propose_train_py", without), anthropic_tool_use("propose_train_py", ADAM_EDIT)]
    with FakeLLMServer(lambda path, body: (200, answers.pop(0))) as server:
        claude_env(server)
        proposal = make_proposer("claude").propose(ctx())
    assert len(server.requests) == 2 and proposal.error == "" and proposal.expected_effect == "+2 points"
    result = server.requests[1]["messages"][2]["content"][0]
    assert result["is_error"] is True and "expected_effect" in result["content"]
    assert [c["purpose"] for c in proposal.calls] == ["propose", "propose-reask"]


def test_overloaded_and_server_errors_are_retried(claude_env):
    script = [
        (529, anthropic_error("overloaded_error", "Overloaded")),
        (500, anthropic_error("api_error", "Internal server error")),
        (200, anthropic_tool_use("propose_train_py", ADAM_EDIT)),
    ]
    with FakeLLMServer(lambda path, body: script.pop(0)) as server:
        claude_env(server)
        proposal = make_proposer("claude").propose(ctx())
    assert len(server.requests) == 3 and proposal.error == ""
    assert len(proposal.calls) == 1  # one logical call, its retries inside the SDK


def test_malformed_answer_is_reasked_once_then_a_failed_proposal(claude_env):
    bad = {"hypothesis": "", "change_type": "structural", "expected_effect": "?", "train_py": "def broken(:"}
    with FakeLLMServer(lambda path, body: (200, anthropic_tool_use("propose_train_py", bad))) as server:
        claude_env(server)
        proposal = make_proposer("claude").propose(ctx())
    assert len(server.requests) == 2
    assert "invalid proposal after one re-ask" in proposal.error
    reask = server.requests[1]["messages"]
    assert reask[1]["role"] == "assistant" and reask[1]["content"][0]["type"] == "tool_use"
    result = reask[2]["content"][0]
    assert result["type"] == "tool_result" and result["is_error"] is True and "hypothesis" in result["content"]
    assert [c["purpose"] for c in proposal.calls] == ["propose", "propose-reask"]


def test_invalid_python_and_bad_edits_never_become_proposals():
    with pytest.raises(InvalidProposal, match="occurs 0 times"):
        apply_edits(BASELINE, [{"search": "NOT IN FILE", "replace": "x"}])
    with pytest.raises(InvalidProposal, match="occurs 2 times"):
        apply_edits("a = 1\na = 1\n", [{"search": "a = 1", "replace": "a = 2"}])


def test_costs_add_up_from_usage_fields(claude_env):
    answers = [(200, anthropic_tool_use("propose_train_py", ADAM_EDIT))]
    with FakeLLMServer(lambda path, body: answers[0], prompt_cache=False) as server:  # the scripted usage, as billed
        claude_env(server)
        proposal = make_proposer("claude").propose(ctx())
    p = DEFAULT_PRICES["claude-sonnet-4-6"]
    expected = (
        USAGE["input_tokens"] * p["input"]
        + USAGE["output_tokens"] * p["output"]
        + USAGE["cache_creation_input_tokens"] * p["cache_write"]
    ) / 1e6
    call = proposal.calls[0]
    assert call["cost_usd"] == pytest.approx(expected) == pytest.approx(0.02175)
    assert (call["input_tokens"], call["output_tokens"], call["cache_write_tokens"], call["cache_read_tokens"]) == (
        1500,
        400,
        3000,
        0,
    )
    assert cost_usd(Usage(cache_read_tokens=1_000_000), "claude-sonnet-4-6") == pytest.approx(0.3)


def test_spending_cap_stops_before_the_call(claude_env):
    with FakeLLMServer(lambda path, body: (200, anthropic_tool_use("propose_train_py", ADAM_EDIT))) as server:
        claude_env(server)
        with pytest.raises(SpendingCapReached, match="spending cap"):
            make_proposer("claude").propose(ctx(max_cost_left=0.01))
    assert server.requests == []


def test_claude_needs_a_key(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ProposerError, match="ANTHROPIC_API_KEY"):
        resolve_spec("claude")


def test_openai_compatible_function_calling_and_reask(monkeypatch):
    answers = [
        (200, openai_function_call("propose_train_py", "{not json")),
        (200, openai_function_call("propose_train_py", {**ADAM_EDIT, "change_type": "structural"})),
    ]
    with FakeLLMServer(lambda path, body: answers.pop(0)) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        proposal = make_proposer("openai", "local").propose(ctx())
    assert proposal.error == "" and "torch.optim.Adam" in proposal.code
    first, second = server.requests
    assert first["tools"][0]["function"]["name"] == "propose_train_py"
    assert STRATEGY in request_text(first) and "## Rules" in first["messages"][0]["content"]
    assert [t["function"]["name"] for t in first["tools"]] == ["propose_train_py", "revise_strategy"]
    assert first["tool_choice"] == {"type": "function", "function": {"name": "propose_train_py"}}
    # prefix-stable for automatic prefix caching: the re-ask only appends
    assert second["messages"][:2] == first["messages"]
    assert second["messages"][-1]["role"] == "tool" and "not valid JSON" in second["messages"][-1]["content"]
    assert all(c["cost_usd"] == 0.0 for c in proposal.calls)  # 'local' models cost nothing


def test_openai_reply_with_json_instead_of_a_function_call(monkeypatch):
    reply = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "local",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Here you go:\n" + __import__("json").dumps({**ADAM_EDIT})},
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }
    with FakeLLMServer(lambda path, body: (200, reply)) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")
        proposal = make_proposer("openai", "local").propose(ctx())
    assert proposal.error == "" and "torch.optim.Adam" in proposal.code


def test_model_strategy_revision(claude_env):
    revised = {"strategy": "Stop tuning SGD. Try Adam, then a small MLP.", "lessons": "SGD tweaks are within noise"}
    with FakeLLMServer(lambda path, body: (200, anthropic_tool_use("revise_strategy", revised))) as server:
        claude_env(server)
        revision = make_proposer("claude").revise_strategy(ctx())
        text, lessons = revision.strategy, revision.lessons
    assert text == revised["strategy"] and lessons == revised["lessons"]
    assert server.requests[0]["tool_choice"]["name"] == "revise_strategy"
    assert "Rewrite the research strategy" in request_text(server.requests[0])
    assert set_constants(BASELINE, {}) == BASELINE


def test_the_docs_show_the_prompt_the_code_builds():
    from infra.proposers.prompt_example import END, PAGE, START, page_block

    text = PAGE.read_text()
    assert text[text.index(START) : text.index(END) + len(END)] == page_block(), (
        "docs/agent.md's prompt example is stale: run python -m infra.proposers.prompt_example --docs"
    )


@pytest.mark.parametrize("bad", [10**20, -5, "many", float("nan")])
def test_an_impossible_usage_is_a_failed_call_counted_at_the_worst_case(claude_env, bad):
    """Found by the red team: 10**20 prompt tokens from a server crashed every run at the store write (too large for
    SQLite), NaN failed a NOT NULL constraint, and a negative count would have lowered the cost and lifted the cap."""
    from infra.proposers.claude import ClaudeProposer

    usage = {**USAGE, "input_tokens": bad}
    with FakeLLMServer(
        lambda path, body: (200, anthropic_tool_use("propose_train_py", ADAM_EDIT, usage=usage)), prompt_cache=False
    ) as server:
        claude_env(server)
        proposal = ClaudeProposer(None).propose(ctx())
    assert proposal.error.startswith("the model call failed: the model server reported input_tokens")
    assert len(proposal.calls) == 1 and proposal.calls[0]["cost_usd"] > 0 and proposal.calls[0]["input_tokens"] == 0


def test_a_call_that_never_ends_is_given_up_at_its_deadline(claude_env, monkeypatch):
    """Found by the red team: the SDK's timeout is per read, so a server trickling a byte at a time held a call (and
    the run) as long as it liked. The whole call has a deadline."""
    import time

    from infra.proposers import llm
    from infra.proposers.claude import ClaudeProposer

    monkeypatch.setattr(llm, "CALL_DEADLINE_S", 1.0)

    def never(path, body):
        time.sleep(30)  # abandoned with the call; the test does not wait for it
        return 200, anthropic_tool_use("propose_train_py", ADAM_EDIT)

    with FakeLLMServer(never) as server:
        claude_env(server)
        proposal = ClaudeProposer(None).propose(ctx())
    assert proposal.error == "the model call failed: no answer within 1 s (the server was still sending, or silent)"
    assert len(proposal.calls) == 1
