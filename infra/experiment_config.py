"""
An experiment's configuration: one typed, validated object, the one place for its defaults and checks.

The CLI builds it from its options (its defaults are these), the research flow takes it as its
parameter (Prefect validates it, the UI shows it, a deployment carries it), and the store keeps it
with the experiment. A bad value fails here, with the field's name, before anything runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from infra import settings
from infra.proposers import ProposerError, is_language_model
from infra.research.acceptance_rule import RuleConfig
from infra.research.code_edit import syntax_error
from infra.research.program import read_program
from infra.sandbox.slots import cuda_index
from infra.store import results_db_url

# what a resumed experiment must keep: changing any of them would give later candidates other compute, or
# (the rule, the proposer) decide later candidates by other standards than earlier ones
FIXED_SETTINGS = (
    "budget_s",
    "export_allowance_s",
    "startup_allowance_s",
    "inference_allowance_s",
    "cpu_threads",
    "repeats",
    "device",
    "slots",
    "pool",
    "local_slots",
    "memory_cap_bytes",
    "proposer",
    "rule",
)
# of those, the ones `autoresearch run --change-rule` may change on resume, each change recorded (SettingChange)
CHANGEABLE_SETTINGS = ("proposer", "rule")


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field("default", description="experiment name (resumes if it exists)")
    iterations: int = Field(20, ge=0, description="iterations after the baseline (iteration 0)")
    budget_s: float = Field(120.0, gt=0, description="training budget per candidate, seconds")
    proposer: str = Field(
        "offline", description="resolved proposer spec: offline, optuna:SAMPLER, replay:DIR, claude or openai"
    )
    revise_every: int = Field(5, ge=1, description="revise the strategy every N iterations")
    repeats: int = Field(2, ge=1, description="seeds for the baseline (later incumbents get theirs from the keep rule)")
    home: str = Field("", description="runs directory (default: AUTORESEARCH_HOME or ./runs)")
    db_url: str = Field(
        "",
        description="SQLAlchemy URL of the store (default: AUTORESEARCH_DB_URL, else SQLite under the runs directory)",
    )
    program_path: str = Field(str(settings.REPO_ROOT / "program.md"), description="program.md to start from")
    baseline_path: str = Field(str(settings.BASELINE_TRAIN_PY), description="train.py to start from (iteration 0)")
    device: str | None = Field(None, description="cpu, cuda, cuda:N or mps (default: the best available)")
    model: str | None = Field(
        None, description="model of a language-model proposer (default: the provider's; claude-sonnet-4-6 for claude)"
    )
    max_cost: float | None = Field(
        None,
        gt=0,
        description="USD cap on proposer calls for the whole experiment; the loop ends before a call could pass it",
    )
    preflight: bool | None = Field(None, description="smoke-run each candidate first (default: on for claude/openai)")
    fix_attempts: int = Field(2, ge=0, description="fixes asked for after a pre-flight crash")
    startup_allowance_s: float | None = Field(
        None, ge=0, description="seconds before the budget for start-up (default: measured once per experiment)"
    )
    export_allowance_s: float | None = Field(
        None,
        ge=0,
        description="seconds after the deadline to save the model before SIGKILL (default: measured once per "
        "experiment)",
    )
    inference_allowance_s: float = Field(
        settings.DEFAULT_INFERENCE_ALLOWANCE_S,
        gt=0,
        description="CPU seconds on one core per 10,000 images a model may spend at evaluation (fixed per experiment)",
    )
    cpu_threads: int | None = Field(
        None,
        ge=1,
        description="cores allotted to a CPU run; its budget is CPU time of these cores (default 1, fixed at the "
        "experiment's first run)",
    )
    slots: int | None = Field(
        None,
        ge=1,
        description="runs measured at once, each on its own cores (or GPU); default: one per GPU, else as many "
        "as leave the orchestrator a core (fixed at the experiment's first run)",
    )
    devices: list[str] | None = Field(
        None, description="one GPU per slot, e.g. cuda:0,cuda:1 (default: every visible GPU when runs go to a GPU)"
    )
    pool: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description="a Prefect work pool whose workers (autoresearch worker) measure the runs; --slots is then how "
        "many are in flight on it (default 2; fixed at the experiment's first run)",
    )
    local_slots: int | None = Field(
        None,
        ge=0,
        description="with --pool: runs measured at once on this machine's own slots besides the pool's, each on its "
        "own cores or --devices GPU (default 0; fixed at the experiment's first run)",
    )
    memory_cap_bytes: int | None = Field(
        None,
        gt=0,
        description="memory cap of one run (None: half the machine's "
        "memory shared among the slots; fixed at the first run)",
    )
    rule: dict[str, float] = Field(default_factory=dict, description="acceptance rule settings (RuleConfig)")
    # for scheduled (overnight) runs: each run adds `iterations`, and ends cleanly before its time is up
    new_iterations: bool = Field(False, description="iterations counts new ones per run, not the experiment's total")
    stop_after_s: float | None = Field(
        None,
        gt=0,
        description="end the run between iterations before this many seconds since it started (None: no limit)",
    )
    stop_at: str | None = Field(
        None,
        description="end the run between iterations before this local time, HH:MM "
        "(its next occurrence after the run starts)",
    )
    crash_limit: int = Field(
        2, ge=1, description="an iteration the orchestrator died in this many times is recorded as failed and skipped"
    )

    @model_validator(mode="before")
    @classmethod
    def _older_names(cls, values: Any) -> Any:
        """A configuration stored before the export allowance replaced the grace: its grace was the allowance. One
        stored before the sequential keep rule: its confirmation runs are the new rule's business (max_runs)."""
        if isinstance(values, dict) and isinstance(values.get("rule"), dict):
            values = {**values, "rule": current_rule(values["rule"])}
        if isinstance(values, dict) and "grace_s" in values:
            values = dict(values)
            grace = values.pop("grace_s")
            if values.get("export_allowance_s") is None:
                values["export_allowance_s"] = grace
        return values

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        problem = settings.name_problem(name)
        if problem:
            raise ValueError(problem)
        return name

    @field_validator("proposer")
    @classmethod
    def _known_proposer(cls, spec: str) -> str:
        try:
            is_language_model(spec)
        except ProposerError as exc:
            raise ValueError(str(exc)) from None
        return spec

    @field_validator("stop_at")
    @classmethod
    def _clock_time(cls, at: str | None) -> str | None:
        if at is not None and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", at):
            raise ValueError(f"{at!r} is not a time of day HH:MM (00:00 to 23:59)")
        return at

    @field_validator("devices")
    @classmethod
    def _gpu_devices(cls, devices: list[str] | None) -> list[str] | None:
        for device in devices or []:
            cuda_index(device)  # SlotError is a ValueError: it says what is wrong
        return devices or None

    @field_validator("rule")
    @classmethod
    def _rule_settings(cls, rule: dict[str, float]) -> dict[str, float]:
        try:
            RuleConfig(**rule)
        except TypeError as exc:
            raise ValueError(f"unknown acceptance rule setting: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"acceptance rule: {exc}") from None
        return rule

    @field_validator("program_path")
    @classmethod
    def _readable_program(cls, path: str) -> str:
        read_program(Path(path))  # ProgramError is a ValueError: it says what is wrong
        return path

    @field_validator("baseline_path")
    @classmethod
    def _runnable_baseline(cls, path: str) -> str:
        if not Path(path).is_file():
            raise ValueError(f"no such baseline file: {path}")
        problem = syntax_error(Path(path).read_text(errors="replace"))
        if problem:
            raise ValueError(f"baseline {path}: {problem}")
        return path

    @model_validator(mode="after")
    def _where_results_live(self) -> ExperimentConfig:
        if not self.home:
            self.home = str(settings.runs_home())
        if not self.db_url:
            self.db_url = results_db_url(Path(self.home))
        return self

    @property
    def language_model(self) -> bool:
        return is_language_model(self.proposer)

    def limits(self) -> settings.Limits:
        assert self.startup_allowance_s is not None and self.export_allowance_s is not None, (
            "resolve the allowances first"
        )
        return settings.Limits(
            budget_s=self.budget_s,
            startup_allowance_s=self.startup_allowance_s,
            export_allowance_s=self.export_allowance_s,
            inference_allowance_s=self.inference_allowance_s,
            cpu_threads=self.cpu_threads or 0,
            memory_cap_bytes=self.memory_cap_bytes or 0,
        )

    def rule_config(self) -> RuleConfig:
        return RuleConfig(**self.rule)


def current_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """Stored acceptance rule settings without the one the sequential rule dropped: the old rule's confirmation
    runs (its cap is max_runs now)."""
    return {k: v for k, v in rule.items() if k != "confirm_runs"}


def fixed_setting_changes(stored: dict[str, Any], config: ExperimentConfig) -> list[tuple[str, Any, Any]]:
    """(setting, stored value, asked-for value) for each fixed setting config would change in a stored experiment's
    configuration. An unset value (None: resolved from the stored one at the run's start) changes nothing."""
    changes = []
    for key in FIXED_SETTINGS:
        before, now = stored.get(key), getattr(config, key)
        if key == "rule" and isinstance(before, dict):
            before = current_rule(before)
        if before is not None and now is not None and before != now:
            changes.append((key, before, now))
    return changes


def explain(exc: ValidationError, names: dict[str, str] | None = None) -> str:
    """Each bad field: which one (by its name in names, e.g. a CLI option, if given), what is wrong, what was given."""
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "config"
        where = (names or {}).get(field, f"--{field.replace('_', '-')}" if names is not None else field)
        message = error["msg"].removeprefix("Value error, ")
        ours = error["type"] == "value_error"  # our validators' messages say what was given
        lines.append(f"{where}: {message}" if ours else f"{where}: {message} (got {error['input']!r})")
    return "; ".join(lines)
