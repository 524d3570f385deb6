"""
The research loop driven by a fake language model through the real SDKs: real edits trained,
evaluated and decided; a pre-flight crash fixed from its traceback; a malformed answer recorded
as a failed proposal; strategy revised at the right iterations; costs accounted; the key kept out.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from infra.proposers.pricing import DEFAULT_PRICES
from infra.store import ProposerCall, Store
from tests.conftest import requires_bwrap, requires_real_data
from tests.fake_llm import FakeLLMServer, anthropic_tool_use, openai_function_call, request_text
from tests.test_llm_proposers import ADAM_EDIT, KEY

pytestmark = [requires_real_data, requires_bwrap]
MLP = (Path(__file__).parent / "fixtures" / "mlp_adam.py").read_text()
BROKEN_MLP = MLP.replace("nn.Linear(784, HIDDEN)", "nn.Linear(783, HIDDEN)")  # fails on the first batch
REVISED = "Adam and small MLPs pay off here; stop tuning plain SGD. (revised by the fake model)"


class ScriptedModel:
    """Answers like a model would, by what the request asks for."""

    def __init__(self, tool_call):
        self.tool_call = tool_call  # (name, input) -> provider-specific response body

    def __call__(self, path: str, body: dict) -> tuple[int, dict]:
        text = request_text(body)
        if "Rewrite the research strategy" in text:
            return 200, self.tool_call(
                "revise_strategy", {"strategy": REVISED, "lessons": "Adam beats SGD in short budgets"}
            )
        if "failed a short pre-flight run" in text:
            return 200, self.tool_call(
                "propose_train_py",
                {
                    "hypothesis": "fixed: the input layer takes 784 features",
                    "change_type": "structural",
                    "expected_effect": "runs",
                    "train_py": MLP,
                },
            )
        iteration = int(re.search(r"Propose iteration (\d+)", text).group(1))
        if iteration == 1:
            return 200, self.tool_call("propose_train_py", ADAM_EDIT)
        if iteration == 2:
            return 200, self.tool_call(
                "propose_train_py",
                {
                    "hypothesis": "an MLP with normalised inputs and cosine-decayed Adam",
                    "change_type": "structural",
                    "expected_effect": "+4 points",
                    "train_py": BROKEN_MLP,
                },
            )
        return 200, self.tool_call(
            "propose_train_py",
            {"hypothesis": "", "change_type": "sideways", "expected_effect": "?", "train_py": "x = ("},
        )


def anthropic_body(name: str, tool_input: dict) -> dict:
    return anthropic_tool_use(name, tool_input)


def openai_body(name: str, tool_input: dict) -> dict:
    return openai_function_call(name, tool_input)


def run_loop(tmp_path: Path, proposer: str, model: str | None) -> tuple[Store, int, Path]:
    from flows.research import research

    home = tmp_path / "runs"
    config = dict(
        name=f"llm-{proposer}",
        iterations=3,
        budget_s=2.0,
        proposer=proposer,
        model=model,
        revise_every=2,
        repeats=2,
        home=str(home),
        db_url=f"sqlite:///{home / 'autoresearch.db'}",
    )
    research(config)
    store = Store(config["db_url"])
    return store, store.experiment(config["name"]).id, home


def check_loop(store: Store, exp_id: int, requests: list[dict]) -> None:
    rows = store.iterations(exp_id)
    assert [r.index for r in rows] == [0, 1, 2, 3] and all(r.finished_at for r in rows)
    adam, mlp, failed = rows[1], rows[2], rows[3]
    # 1: the Adam edit was trained, evaluated and decided by the rule
    assert adam.status == "ok" and "torch.optim.Adam" in adam.code and adam.val_accuracy > 0.5
    assert adam.expected_effect == ADAM_EDIT["expected_effect"]  # checked, and stored with the iteration
    for row in (adam, mlp):  # decided by the rule, whichever way the noise fell
        assert (row.verdict == "keep") == (row.decision["stop"] == "kept"), row.decision
    # 2: the broken MLP crashed at pre-flight, the traceback went back, the fix was trained for real
    assert [a["status"] for a in mlp.attempts] == ["crashed", "ok"]
    assert "mat1 and mat2 shapes cannot be multiplied" in mlp.attempts[0]["reason"]
    fix_requests = [r for r in requests if "failed a short pre-flight run" in request_text(r)]
    assert len(fix_requests) == 1 and "Traceback" in request_text(fix_requests[0])
    assert "mat1 and mat2 shapes cannot be multiplied" in request_text(fix_requests[0])
    assert mlp.code == MLP and mlp.status == "ok" and mlp.val_accuracy > 0.8
    assert mlp.expected_effect == "+4 points"  # the idea's, not the fix's
    # 3: malformed twice: a failed proposal, recorded, never trained
    assert failed.status == "invalid" and "invalid proposal after one re-ask" in failed.reason
    assert failed.verdict == "discard" and failed.val_accuracy is None
    # strategy revised after iteration 2 (revise_every=2), and the next prompt carries it
    assert [(s.version, s.after_iteration) for s in store.strategies(exp_id)] == [(0, 0), (1, 2)]
    texts = [request_text(r) for r in requests]
    revise_at = next(i for i, t in enumerate(texts) if "Rewrite the research strategy" in t)
    assert "Propose iteration 2" in "".join(texts[:revise_at]) and "Propose iteration 3" in texts[revise_at + 1]
    assert REVISED in texts[revise_at + 1] and all(REVISED not in t for t in texts[:revise_at])


def prefect_log_messages() -> list[str]:
    import asyncio

    from prefect.client.orchestration import get_client

    async def read() -> list[str]:
        from prefect.client.schemas.sorting import LogSort

        async with get_client() as client:  # the newest first: the harness holds every earlier test's logs too
            return [log.message for log in await client.read_logs(limit=200, sort=LogSort.TIMESTAMP_DESC)]

    return asyncio.run(read())


def test_claude_loop(tmp_path, prefect_harness, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    with FakeLLMServer(ScriptedModel(anthropic_body)) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        store, exp_id, home = run_loop(tmp_path, "claude", None)
    check_loop(store, exp_id, server.requests)
    assert all(r["system"][-1]["cache_control"] == {"type": "ephemeral"} for r in server.requests)
    assert all("## Goal" in r["system"][-1]["text"] and "## Rules" in r["system"][-1]["text"] for r in server.requests)
    # the fix of iteration 2 shares its propose call's prefix: tools, system, incumbent, situation
    texts = [request_text(r) for r in server.requests]
    fix_at = next(i for i, t in enumerate(texts) if "failed a short pre-flight run" in t)
    assert "Propose iteration 2" in texts[fix_at - 1]
    assert server.usages[fix_at]["cache_read_input_tokens"] > server.usages[fix_at - 1]["cache_read_input_tokens"]
    with store.session() as session:  # the stored calls say so too
        stored = [
            (c.purpose, c.cache_read_tokens)
            for c in session.scalars(
                select(ProposerCall).where(ProposerCall.experiment_id == exp_id).order_by(ProposerCall.id)
            )
        ]
    assert [purpose for purpose, _ in stored[fix_at - 1 : fix_at + 1]] == ["propose", "fix"]
    assert stored[fix_at][1] == server.usages[fix_at]["cache_read_input_tokens"] > 0
    # costs add up from the usage fields the (caching) fake reported
    p = DEFAULT_PRICES["claude-sonnet-4-6"]
    billed = sum(
        (
            u["input_tokens"] * p["input"]
            + u["output_tokens"] * p["output"]
            + u["cache_creation_input_tokens"] * p["cache_write"]
            + u["cache_read_input_tokens"] * p["cache_read"]
        )
        / 1e6
        for u in server.usages
    )
    assert store.total_cost(exp_id) == pytest.approx(billed)
    assert sum(store.cost_by_iteration(exp_id).values()) == pytest.approx(store.total_cost(exp_id))
    # the API key is nowhere: not in the store, the workspace, or the Prefect logs and flow parameters
    for path in home.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    messages = prefect_log_messages()
    assert any("trained: status ok" in m for m in messages)  # the logs are there to be searched
    assert not any(KEY in m for m in messages)


def test_openai_compatible_loop(tmp_path, prefect_harness, monkeypatch):
    with FakeLLMServer(ScriptedModel(openai_body)) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        store, exp_id, _ = run_loop(tmp_path, "openai", "local")
    check_loop(store, exp_id, server.requests)
    assert store.total_cost(exp_id) == 0.0


def test_spending_cap_ends_the_loop_cleanly(tmp_path, prefect_harness, monkeypatch):
    from flows.research import research

    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    # crisp numbers: only output tokens cost, $10 per million. A call's worst case is its 8192 output
    # tokens ($0.08192); each real call bills 400 ($0.004). Under a $0.084 cap one call fits, a second could not.
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"claude-sonnet-4-6": {"input": 0, "output": 10, "cache_write": 0, "cache_read": 0}}))
    monkeypatch.setenv("AUTORESEARCH_PRICES", str(prices))
    with FakeLLMServer(lambda path, body: (200, anthropic_tool_use("propose_train_py", ADAM_EDIT))) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        home = tmp_path / "runs"
        config = dict(
            name="capped",
            iterations=3,
            budget_s=1.0,
            proposer="claude",
            max_cost=0.084,
            preflight=False,
            revise_every=5,
            repeats=2,
            home=str(home),
            db_url=f"sqlite:///{home / 'autoresearch.db'}",
        )
        research(config)
    store = Store(config["db_url"])
    exp = store.experiment("capped")
    assert exp.status == "stopped"
    assert [r.index for r in store.iterations(exp.id)] == [0, 1]
    assert len(server.requests) == 1 and store.total_cost(exp.id) == pytest.approx(0.004)
