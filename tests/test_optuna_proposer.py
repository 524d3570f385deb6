"""
The Optuna proposer (infra/proposers/optuna_search.py) and its search space (infra/proposers/search_space.py):
the space inferred from train.py's constants and overridden by program.md; one trial per iteration, asked once
even when the orchestrator dies between the ask and the store; the loop's outcomes told back; the study kept in the
experiment's own store without touching the store's schema; what a revision writes. The last test SIGKILLs the
real `autoresearch run` and checks that the study and the iterations still agree.
"""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from sqlalchemy import create_engine, inspect, text

from infra.proposers import ProposalContext, ProposerError, make_proposer, resolve_spec
from infra.proposers.optuna_search import OptunaProposer, settle, storage, study_name
from infra.proposers.search_space import SpaceError, search_space
from infra.records import IterationRecord, Status, Verdict
from infra.research.code_edit import classify_change, tunable_constants
from infra.settings import BASELINE_TRAIN_PY, REPO_ROOT
from infra.store import Store
from infra.store.store import MIGRATIONS_DIR
from tests.conftest import requires_bwrap, requires_real_data

BASELINE = BASELINE_TRAIN_PY.read_text()
PROGRAM = (REPO_ROOT / "program.md").read_text()
TRAIN_PY = """
LEARNING_RATE = 0.1
BATCH_SIZE = 32
MOMENTUM = 0.0
WEIGHT_DECAY = 0.0
DROPOUT = 0.25
USE_BN = True
SCALE = 2.5
"""


def block(body: str) -> str:
    return PROGRAM + f"\n```json optuna-space\n{body}\n```\n"


def test_the_space_is_inferred_from_each_constants_type_and_value():
    space = search_space(TRAIN_PY, PROGRAM)
    assert space["LEARNING_RATE"] == FloatDistribution(0.01, 1.0, log=True)  # a rate: a factor of ten either way
    assert space["BATCH_SIZE"] == IntDistribution(8, 128, log=True)  # a size: a quarter to four times
    assert space["MOMENTUM"] == FloatDistribution(0.0, 0.99)  # lives in [0, 1)
    assert space["WEIGHT_DECAY"] == FloatDistribution(1e-6, 1e-2, log=True)  # zero: a log scale cannot hold it
    assert space["DROPOUT"] == FloatDistribution(0.0, 0.99)
    assert space["USE_BN"] == CategoricalDistribution([False, True])
    assert space["SCALE"] == FloatDistribution(0.625, 10.0, log=True)
    assert list(space) == list(tunable_constants(TRAIN_PY))  # file order


def test_program_md_overrides_the_space():
    program = block(
        '{"LEARNING_RATE": {"low": 0.001, "high": 0.3, "log": true}, "BATCH_SIZE": {"choices": [64, 128]},'
        ' "MOMENTUM": "fixed", "DROPOUT": {"low": 0, "high": 0.5, "step": 0.1}, "SCALE": {"low": 1, "high": 4}}'
    )
    space = search_space(TRAIN_PY, program)
    assert space["LEARNING_RATE"] == FloatDistribution(0.001, 0.3, log=True)
    assert space["BATCH_SIZE"] == CategoricalDistribution([64, 128])
    assert "MOMENTUM" not in space  # fixed: stays at the incumbent's value
    assert space["DROPOUT"] == FloatDistribution(0.0, 0.5, step=0.1)
    assert space["SCALE"] == FloatDistribution(1.0, 4.0)
    assert space["WEIGHT_DECAY"] == FloatDistribution(1e-6, 1e-2, log=True)  # not named: inferred


@pytest.mark.parametrize(
    "body, message",
    [
        ('{"LEARNING_RATE": {"low": 0.1}', "is not JSON"),
        ('["LEARNING_RATE"]', "must be a JSON object"),
        ('{"LR": "fixed"}', "names LR, not tunable constants of train.py"),
        ('{"LEARNING_RATE": {"low": 0.3, "high": 0.1}}', "low 0.3 must be below high 0.1"),
        ('{"WEIGHT_DECAY": {"low": 0, "high": 0.1, "log": true}}', "a log scale needs low above 0"),
        ('{"BATCH_SIZE": {"low": 16, "high": 64.5}}', "is an integer"),
        ('{"USE_BN": {"low": 0, "high": 1}}', "is a switch"),
        ('{"BATCH_SIZE": {"choices": [16, "big"]}}', "choice 'big' is not"),
        ('{"LEARNING_RATE": {"low": 0.1, "high": 1, "sigma": 2}}', "needs low and high"),
        ('{"LEARNING_RATE": "frozen"}', 'must be "fixed"'),
        ('{"LEARNING_RATE": {"low": "NaN", "high": 1}}', "must be a finite number"),
    ],
)
def test_a_block_that_cannot_be_used_is_refused_with_the_reason(body, message):
    with pytest.raises(SpaceError, match="optuna-space") as caught:
        search_space(TRAIN_PY, block(body))
    assert message in str(caught.value)


def test_nothing_left_to_search_and_two_blocks_are_refused():
    fixed = ", ".join(f'"{name}": "fixed"' for name in tunable_constants(TRAIN_PY))
    with pytest.raises(SpaceError, match="nothing to search"):
        search_space(TRAIN_PY, block("{" + fixed + "}"))
    with pytest.raises(SpaceError, match="2 optuna-space blocks"):
        search_space(TRAIN_PY, block("{}") + "\n```json optuna-space\n{}\n```\n")


def test_the_spec_names_the_sampler():
    assert resolve_spec("optuna")[0] == "optuna:tpe"
    assert resolve_spec("optuna:cmaes")[0] == "optuna:cmaes"
    with pytest.raises(ProposerError, match="unknown Optuna sampler 'grid'"):
        resolve_spec("optuna:grid")
    assert isinstance(make_proposer("optuna:random"), OptunaProposer)


@pytest.fixture
def store_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'autoresearch.db'}"
    Store(url).ensure_experiment("opt", {})
    return url


def context(url: str, iteration: int, history: list[IterationRecord] | None = None, **given) -> ProposalContext:
    return ProposalContext(
        iteration=iteration,
        incumbent_code=given.pop("code", BASELINE),
        strategy="",
        program=given.pop("program", PROGRAM),
        history=history or [],
        seed=7,
        experiment="opt",
        store_url=url,
        **given,
    )


def measured(
    iteration: int, memory: dict, score: float | None, status: Status = Status.OK, proposer: str = "optuna"
) -> IterationRecord:
    verdict = Verdict.DISCARD if score is None or score < 0.9 else Verdict.KEEP
    return IterationRecord(
        iteration, status, verdict, val_accuracy=score, memory=memory, finished=True, proposer=proposer
    )


def trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study_name("opt"), storage=storage(url)).trials


def test_the_study_lives_in_the_store_and_leaves_its_schema_alone(store_url):
    proposal = OptunaProposer().propose(context(store_url, 1))
    engine = create_engine(store_url)
    tables = set(inspect(engine).get_table_names())
    assert {"trials", "studies", "iterations", "measured_runs"} <= tables
    with engine.connect() as db:
        version = db.execute(text("select version_num from alembic_version")).scalars().all()
    heads = sorted(p.name.split("_")[0] for p in (MIGRATIONS_DIR / "versions").glob("0*.py"))
    assert version == [heads[-1]]  # the store's own revision, not Optuna's
    Store(store_url)  # opens and migrates as before
    assert proposal.memory["trial"] == 0 and [t.user_attrs["iteration"] for t in trials(store_url)] == [1]


def test_one_trial_per_iteration_and_the_candidate_is_the_trial(store_url):
    first = OptunaProposer().propose(context(store_url, 1))
    again = OptunaProposer().propose(context(store_url, 1))  # the orchestrator died before storing iteration 1
    assert (again.memory, again.code) == (first.memory, first.code)
    assert len(trials(store_url)) == 1
    assert classify_change(BASELINE, first.code).value == "parametric"
    assert tunable_constants(first.code) == first.memory["params"]
    second = OptunaProposer().propose(context(store_url, 2))
    assert second.memory["trial"] == 1 and second.code != first.code
    assert second.hypothesis.startswith("Optuna tpe trial 1: ")


def test_the_loops_outcomes_are_told_once(store_url):
    proposals = [OptunaProposer().propose(context(store_url, i)) for i in (1, 2, 3, 4, 5)]
    history = [
        measured(1, proposals[0].memory, 0.85),
        measured(2, proposals[1].memory, None, Status.CRASHED),
        measured(3, {}, None, Status.INVALID),  # refused at intake: its memory did not survive
        # iteration 4 went to another proposer (resumed with --change-rule), whose memory names the trial
        measured(4, proposals[3].memory, 0.99, proposer="claude"),
        # iteration 5 is still being measured
    ]
    study = optuna.load_study(study_name=study_name("opt"), storage=storage(store_url))
    assert settle(study, history) == 4
    assert settle(study, history) == 0  # idempotent
    got = {t.user_attrs["iteration"]: t for t in trials(store_url)}
    assert (got[1].state, got[1].value, got[1].user_attrs["verdict"]) == (TrialState.COMPLETE, 0.85, "discard")
    assert got[2].state == TrialState.FAIL and got[3].state == TrialState.FAIL
    assert (got[4].state, got[4].user_attrs["verdict"]) == (TrialState.FAIL, "other")  # its score is not the trial's
    assert got[5].state == TrialState.RUNNING


def test_each_sampler_draws_inside_the_space(store_url):
    program = block('{"BATCH_SIZE": {"choices": [16, 64]}, "MOMENTUM": "fixed"}')
    for n, sampler in enumerate(("cmaes", "random", "tpe"), start=1):
        proposal = OptunaProposer(sampler).propose(context(store_url, n, program=program))
        values = tunable_constants(proposal.code)
        assert values["BATCH_SIZE"] in (16, 64) and values["MOMENTUM"] == 0.0
        assert 0.01 <= values["LEARNING_RATE"] <= 1.0 and 1e-6 <= values["WEIGHT_DECAY"] <= 1e-2
    with pytest.raises(ProposerError, match="unknown Optuna sampler"):
        OptunaProposer("grid")


def test_the_space_is_fixed_when_the_study_starts(store_url):
    OptunaProposer().propose(context(store_url, 1, program=block('{"LEARNING_RATE": {"low": 0.05, "high": 0.2}}')))
    later = OptunaProposer().propose(context(store_url, 2, program=PROGRAM))  # the block is gone from program.md now
    assert 0.05 <= later.memory["params"]["LEARNING_RATE"] <= 0.2


def test_a_revision_writes_the_best_region_and_the_importances(store_url):
    history = []
    for i in range(1, 13):
        proposal = OptunaProposer("random").propose(context(store_url, i, history))
        lr = proposal.memory["params"]["LEARNING_RATE"]
        history.append(measured(i, proposal.memory, 0.9 - abs(lr - 0.1)))  # the score depends on the rate alone
    revision = OptunaProposer().revise_strategy(context(store_url, 13, history))
    assert "12 trials, 12 measured, 0 failed" in revision.strategy
    assert "- LEARNING_RATE: [0.01, 1] log" in revision.strategy
    assert "Best region" in revision.strategy and "Importances" in revision.strategy
    importances = revision.strategy.split("Importances")[1].splitlines()[1]
    assert importances.startswith("- LEARNING_RATE:"), revision.strategy  # ranked first
    assert "LEARNING_RATE matters most" in revision.lessons


@requires_real_data
@requires_bwrap
@pytest.mark.process_driven
def test_sigkill_between_ask_and_store_and_after_a_decision_then_resume(tmp_path):
    """The real CLI with --proposer optuna, SIGKILLed right after a trial is asked for iteration 2 (not yet stored)
    and right after iteration 3 is decided (not yet recorded); then it finishes. Each iteration has exactly one
    trial, the trial the iteration's memory names, and every trial is told its iteration's outcome."""
    home = tmp_path / "runs"
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "app.cli", "run", "--experiment", "opt", "--iterations", "4", "--budget", "2"]
    command += ["--proposer", "optuna", "--home", str(home), "--revise-every", "3"]
    for point in ("asked:2", "decided:3", ""):
        output = tmp_path / f"cli-{point or 'final'}.log"
        with open(output, "w") as sink:
            done = subprocess.run(
                command, cwd=REPO_ROOT, env={**env, "AUTORESEARCH_FAILPOINT": point}, stdout=sink, stderr=sink
            )
        assert done.returncode == (-9 if point else 0), f"{point}: {done.returncode}\n{output.read_text()[-3000:]}"

    store = Store(f"sqlite:///{home / 'autoresearch.db'}")
    records = store.records(store.experiment("opt").id)
    assert [r.iteration for r in records] == [0, 1, 2, 3, 4] and all(r.finished for r in records)
    by_iteration = {t.user_attrs["iteration"]: t for t in trials(store.url)}
    assert len(by_iteration) == len(trials(store.url)) == 4  # one trial per iteration: the asked one was reused
    for record in records[1:]:
        trial = by_iteration[record.iteration]
        assert record.memory["trial"] == trial.number
        if record.status == Status.OK:
            assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(record.val_accuracy)
            assert trial.user_attrs["verdict"] == str(record.verdict)
        else:
            assert trial.state == TrialState.FAIL
    assert "Optuna search (tpe sampler)" in store.strategies(store.experiment("opt").id)[-1].text
