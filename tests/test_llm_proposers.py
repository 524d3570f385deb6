"""The Claude and OpenAI-compatible proposers through their real SDKs, against local fake servers."""

from __future__ import annotations

import pytest

from infra.proposers import ProposalContext, ProposerError, make_proposer, resolve_spec
from infra.proposers.llm import SpendingCapReached, apply_edits, InvalidProposal
from infra.proposers.pricing import DEFAULT_PRICES, Usage, cost_usd
from infra.records import ChangeType, Status, Verdict
from infra.research.code_edit import set_constants
from infra.settings import BASELINE_TRAIN_PY
from tests.conftest import record
from tests.fake_llm import (USAGE, FakeLLMServer, anthropic_error, anthropic_tool_use, openai_function_call,
                            request_text)

BASELINE = BASELINE_TRAIN_PY.read_text()
KEY = "sk-ant-test-SECRET-0123456789"
ADAM_EDIT = {
    "hypothesis": "Adam at lr 1e-3 converges faster than plain SGD in a short budget",
    "change_type": "structural",
    "expected_effect": "+2 points",
    "edits": [{"search": "LEARNING_RATE = 0.1", "replace": "LEARNING_RATE = 0.001"},
              {"search": "torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)",
               "replace": "torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)"}],
}


def ctx(**kw) -> ProposalContext:
    base = dict(iteration=4, incumbent_code=BASELINE, strategy="Try Adam before anything structural.",
                history=[record(1, status=Status.CRASHED, change_type=ChangeType.STRUCTURAL, hypothesis="a CNN",
                                reason="RuntimeError: shapes",
                                log_tail="Traceback (most recent call last)\nRuntimeError: shapes"),
                         record(2, decision=Verdict.KEEP, val_accuracy=0.85, hypothesis="lower lr",
                                rule={"delta": 0.012})],
                hardware={"device": "cpu", "budget_s": 120, "incumbent_epochs": 42, "incumbent_seconds_per_epoch": 2.8})
    base.update(kw)
    return ProposalContext(**base)


@pytest.fixture
def claude_env(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)

    def point_at(server: FakeLLMServer) -> None:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    return point_at


def test_request_carries_strategy_incumbent_history_hardware_and_cache_control(claude_env):
    with FakeLLMServer(lambda path, body: (200, anthropic_tool_use("propose_train_py", ADAM_EDIT))) as server:
        claude_env(server)
        proposal = make_proposer("claude").propose(ctx())
    assert proposal.error == "" and "torch.optim.Adam" in proposal.code and "LEARNING_RATE = 0.001" in proposal.code
    assert proposal.change_type == "structural"
    body = server.requests[0]
    assert body["model"] == "claude-sonnet-4-6"
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert "load_split" in body["system"][0]["text"] and "TrainingBudget" in body["system"][0]["text"]
    stable, task = body["messages"][0]["content"]
    assert stable["cache_control"] == {"type": "ephemeral"} and "cache_control" not in task
    assert "Try Adam before anything structural." in stable["text"] and "LEARNING_RATE = 0.1" in stable["text"]
    assert "42 epochs at 2.80 s per epoch" in task["text"] and "budget 120 s" in task["text"]
    assert "lower lr" in task["text"] and "+0.0120" in task["text"] and "RuntimeError: shapes" in task["text"]
    assert body["tool_choice"] == {"type": "tool", "name": "propose_train_py"}
    headers = {k.lower(): v for k, v in server.headers[0].items()}
    assert KEY in headers.get("x-api-key", "") + headers.get("authorization", "")  # the key goes to the API only


def test_overloaded_and_server_errors_are_retried(claude_env):
    script = [(529, anthropic_error("overloaded_error", "Overloaded")),
              (500, anthropic_error("api_error", "Internal server error")),
              (200, anthropic_tool_use("propose_train_py", ADAM_EDIT))]
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
    with FakeLLMServer(lambda path, body: answers[0]) as server:
        claude_env(server)
        proposal = make_proposer("claude").propose(ctx())
    p = DEFAULT_PRICES["claude-sonnet-4-6"]
    expected = (USAGE["input_tokens"] * p["input"] + USAGE["output_tokens"] * p["output"]
                + USAGE["cache_creation_input_tokens"] * p["cache_write"]) / 1e6
    call = proposal.calls[0]
    assert call["cost_usd"] == pytest.approx(expected) == pytest.approx(0.02175)
    assert (call["input_tokens"], call["output_tokens"], call["cache_write_tokens"], call["cache_read_tokens"]) == (1500, 400, 3000, 0)
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
    answers = [(200, openai_function_call("propose_train_py", "{not json")),
               (200, openai_function_call("propose_train_py", {**ADAM_EDIT, "change_type": "structural"}))]
    with FakeLLMServer(lambda path, body: answers.pop(0)) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        proposal = make_proposer("openai", "local").propose(ctx())
    assert proposal.error == "" and "torch.optim.Adam" in proposal.code
    first, second = server.requests
    assert first["tools"][0]["function"]["name"] == "propose_train_py"
    assert "Try Adam before anything structural." in request_text(first)
    assert second["messages"][-1]["role"] == "tool" and "not valid JSON" in second["messages"][-1]["content"]
    assert all(c["cost_usd"] == 0.0 for c in proposal.calls)  # 'local' models cost nothing


def test_openai_reply_with_json_instead_of_a_function_call(monkeypatch):
    reply = {"id": "x", "object": "chat.completion", "created": 0, "model": "local",
             "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content":
                          "Here you go:\n" + __import__("json").dumps({**ADAM_EDIT})}}],
             "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}
    with FakeLLMServer(lambda path, body: (200, reply)) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")
        proposal = make_proposer("openai", "local").propose(ctx())
    assert proposal.error == "" and "torch.optim.Adam" in proposal.code


def test_model_strategy_revision(claude_env):
    revised = {"strategy": "Stop tuning SGD. Try Adam, then a small MLP.", "lessons": "SGD tweaks are within noise"}
    with FakeLLMServer(lambda path, body: (200, anthropic_tool_use("revise_strategy", revised))) as server:
        claude_env(server)
        text, lessons = make_proposer("claude").revise_strategy(ctx())
    assert text == revised["strategy"] and lessons == revised["lessons"]
    assert server.requests[0]["tool_choice"]["name"] == "revise_strategy"
    assert "Rewrite the research strategy" in request_text(server.requests[0])
    assert set_constants(BASELINE, {}) == BASELINE
