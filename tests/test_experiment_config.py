"""The experiment's configuration: one typed object with the defaults and the checks, and the flow's parameter."""

from __future__ import annotations

import inspect

import pytest
from pydantic import ValidationError

from app.cli import run
from infra.experiment_config import ExperimentConfig, explain
from infra.settings import BASELINE_TRAIN_PY


def test_defaults_live_in_one_place_and_fill_where_results_go(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AUTORESEARCH_DB_URL", raising=False)
    cfg = ExperimentConfig()
    assert (cfg.name, cfg.iterations, cfg.budget_s, cfg.repeats, cfg.proposer) == ("default", 20, 120.0, 2, "offline")
    options = inspect.signature(run).parameters  # the CLI's options take the field's default and help text
    assert options["iterations"].default.default == 20 and options["budget_s"].default.default == 120.0
    assert options["budget_s"].default.help == ExperimentConfig.model_fields["budget_s"].description
    assert cfg.home == str(tmp_path / "home") and cfg.db_url == f"sqlite:///{tmp_path / 'home' / 'autoresearch.db'}"
    assert not cfg.language_model and ExperimentConfig(proposer="claude").language_model


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("repeats", 0, "greater than or equal to 1"),
        ("iterations", -1, "greater than or equal to 0"),
        ("budget_s", 0, "greater than 0"),
        ("revise_every", 0, "greater than or equal to 1"),
        ("cpu_threads", 0, "greater than or equal to 1"),
        ("max_cost", -1.0, "greater than 0"),
        ("name", "../etc", "invalid experiment name"),
        ("proposer", "gpt5", "unknown proposer 'gpt5'"),
        ("rule", {"confidense": 0.9}, "unknown acceptance rule setting"),
        ("baseline_path", "/no/such/train.py", "no such baseline file"),
        ("program_path", "/no/such/program.md", "program.md"),
        ("budget", 10, "Extra inputs are not permitted"),
    ],
)
def test_every_bad_value_is_refused_by_name_before_anything_runs(field, value, message):
    with pytest.raises(ValidationError) as caught:
        ExperimentConfig(**{field: value})
    text = explain(caught.value)
    assert text.startswith(f"{field}: ") and message in text
    assert explain(caught.value, {"name": "--experiment"}).startswith(
        "--experiment: " if field == "name" else f"--{field.replace('_', '-')}: "
    )


def test_a_baseline_that_does_not_compile_is_refused(tmp_path):
    broken = tmp_path / "train.py"
    broken.write_text(BASELINE_TRAIN_PY.read_text() + "\ndef oops(:\n")
    with pytest.raises(ValidationError, match="syntax error at line"):
        ExperimentConfig(baseline_path=str(broken))


def test_the_flow_takes_the_typed_config_as_its_parameter(tmp_path):
    """Prefect validates it and shows its fields in the UI: the flow's parameter schema carries them."""
    from prefect.utilities.callables import parameter_schema

    from flows.research import research

    schema = parameter_schema(research).model_dump_for_openapi()
    fields = schema["definitions"]["ExperimentConfig"]["properties"]
    assert {"budget_s", "repeats", "proposer", "cpu_threads"} <= set(fields)
    assert fields["repeats"]["minimum"] == 1 and fields["budget_s"]["exclusiveMinimum"] == 0


def test_a_direct_call_of_the_flow_with_a_bad_value_fails_clearly(tmp_path, prefect_harness):
    """Today's bug: research({... 'repeats': 0}) died with an IndexError inside the baseline."""
    from prefect.exceptions import ParameterTypeError

    from flows.research import research

    with pytest.raises(ParameterTypeError, match="repeats"):
        research({"name": "zero", "repeats": 0, "home": str(tmp_path)})
    assert not (tmp_path / "zero").exists() and not (tmp_path / "autoresearch.db").exists()
