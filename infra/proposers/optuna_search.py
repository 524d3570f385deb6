"""
The Optuna proposer: classical hyperparameter search over train.py's UPPER_CASE constants. No LLM.

- The search space is inferred from the constants (infra/proposers/search_space.py), or given in program.md; it is
  fixed when the study starts and stored with it, so every trial draws from the same distributions.
- One proposal is one `ask`. The candidate is the incumbent's train.py with every searched constant set to the
  trial's value (a trial is a whole configuration, not a step from the incumbent).
- The loop's verdict and measured score go back through `tell`: the candidate's mean validation accuracy over the
  runs its decision took, or a failed trial when it crashed, failed its intake or was never measured. `settle` does
  it from the stored iterations, so it is idempotent and a resumed run tells what a killed one could not.
- The study lives in the experiment's own store (Optuna's RDB storage, in the same database as the iterations),
  named after the experiment; a resumed run continues it. A trial asked for an iteration that was never stored (the
  orchestrator died in between) is handed out again for that iteration, so trials and iterations stay one to one.
- Samplers: tpe (default; constant_liar, so candidates in flight in other slots are not drawn twice), cmaes
  or random. Each draw is seeded by the experiment and the iteration.
- Strategy revision writes what the study learned: the best trial, the best region, the importances.
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, distribution_to_json, json_to_distribution
from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.pool import NullPool

from infra.failpoints import failpoint
from infra.proposers.base import CannotFix, Proposal, ProposalContext, ProposerError, Revision
from infra.proposers.search_space import describe, search_space
from infra.records import ChangeType, IterationRecord, Status, Verdict
from infra.research.code_edit import set_constants, tunable_constants

SAMPLERS = ("tpe", "cmaes", "random")
DEFAULT_SAMPLER = "tpe"
# TPE draws at random until it has this many finished trials: Optuna's default is 10, but a CPU night here holds
# 20 to 50 candidates, and the loop's own noise-aware verdicts already guard against a lucky draw
STARTUP_TRIALS = 5
SPACE_ATTR = "space"  # the study's search space, as Optuna's distribution JSON: fixed at its start
ITERATION_ATTR = "iteration"  # the loop iteration a trial was asked for
VERDICT_ATTR = "verdict"
BEST_REGION_QUANTILE = 0.25
MIN_TRIALS_FOR_IMPORTANCE = 4

optuna.logging.set_verbosity(logging.WARNING)  # its per-trial INFO lines would drown the loop's own


def study_name(experiment: str) -> str:
    return f"autoresearch-{experiment}"


def storage(store_url: str) -> RDBStorage:
    """Optuna's RDB storage on the experiment's store. Its tables sit beside the store's own; its schema check is
    skipped because the database's alembic_version is the store's (infra/store/migrations), not Optuna's."""
    if not store_url:
        raise ProposerError("the optuna proposer needs the experiment's store (no store URL in its context)")
    # a storage is made for each proposal and each outcome: no pool, so none of its connections outlive it
    engine_kwargs: dict[str, Any] = {"poolclass": NullPool}
    if store_url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 30}
    return RDBStorage(store_url, engine_kwargs=engine_kwargs, skip_compatibility_check=True)


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=STARTUP_TRIALS)
    if name == "cmaes":  # switches and choices are drawn at random beside it (CMA-ES is for numbers)
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=STARTUP_TRIALS, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ProposerError(f"unknown Optuna sampler {name!r}: expected one of {', '.join(SAMPLERS)}")


def _rounded(value: Any) -> Any:
    """A drawn value as train.py will hold it: floats to 4 significant digits, so the diff reads well."""
    return float(f"{value:.4g}") if isinstance(value, float) else value


class OptunaProposer(CannotFix):
    name = "optuna"

    def __init__(self, sampler: str = DEFAULT_SAMPLER):
        if sampler not in SAMPLERS:
            raise ProposerError(f"unknown Optuna sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
        self.sampler = sampler

    # --- the study ----------------------------------------------------------------

    def study(self, ctx: ProposalContext) -> optuna.Study:
        """The experiment's study, made (with its search space, from the incumbent and program.md) if there is
        none. Raises SpaceError for a search-space block that cannot be used."""
        place = storage(ctx.store_url)
        name = study_name(ctx.experiment)
        try:
            stored = place.get_study_user_attrs(place.get_study_id_from_name(name)).get(SPACE_ATTR)
        except KeyError:  # no such study yet
            stored = None
        space = (
            {k: json_to_distribution(v) for k, v in stored.items()}
            if stored
            else search_space(ctx.incumbent_code, ctx.program)
        )
        seed = (ctx.seed * 1_000_003 + ctx.iteration) % 2**32  # the same draw for the same iteration on resume
        study = optuna.create_study(
            storage=place,
            study_name=name,
            direction="maximize",
            sampler=make_sampler(self.sampler, seed),
            load_if_exists=True,
        )
        if not stored:
            study.set_user_attr(SPACE_ATTR, {k: distribution_to_json(d) for k, d in space.items()})
        return study

    @staticmethod
    def space_of(study: optuna.Study) -> dict[str, BaseDistribution]:
        return {k: json_to_distribution(v) for k, v in study.user_attrs[SPACE_ATTR].items()}

    # --- tell ---------------------------------------------------------------------

    def settle(self, ctx: ProposalContext) -> int:
        """Tell the study every finished iteration's outcome that it has not been told; returns how many."""
        return settle(self.study(ctx), ctx.history)

    # --- ask ----------------------------------------------------------------------

    def propose(self, ctx: ProposalContext) -> Proposal | None:
        study = self.study(ctx)
        settle(study, ctx.history)
        space = self.space_of(study)
        waiting = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get(ITERATION_ATTR) == ctx.iteration
        ]
        if waiting:  # asked for this iteration before the orchestrator died: the same trial, not a new one
            number, params = waiting[0].number, waiting[0].params
        else:
            trial = study.ask(space)
            trial.set_user_attr(ITERATION_ATTR, ctx.iteration)
            number, params = trial.number, trial.params
            failpoint("asked", ctx.iteration)  # the chaos tests: asked, and the iteration not stored yet
        constants = tunable_constants(ctx.incumbent_code)
        values = {k: _rounded(v) for k, v in params.items() if k in constants}
        code = set_constants(ctx.incumbent_code, values)
        moved = [f"{k} {constants[k]} -> {v}" for k, v in values.items() if v != constants[k]]
        return Proposal(
            hypothesis=f"Optuna {self.sampler} trial {number}: " + (", ".join(moved) or "the incumbent's values"),
            change_type=ChangeType.PARAMETRIC,
            code=code,
            expected_effect=f"trial {number} of study {study.study_name}: {len(space)} constants drawn",
            memory={"trial": number, "sampler": self.sampler, "params": values},
        )

    # --- what it learned ----------------------------------------------------------

    def revise_strategy(self, ctx: ProposalContext) -> Revision:
        study = self.study(ctx)
        settle(study, ctx.history)
        return Revision(*lessons_of(study, self.space_of(study), self.sampler, ctx.iteration - 1))


def settle(study: optuna.Study, history: list[IterationRecord]) -> int:
    """Tell every running trial whose iteration has finished: its measured mean (decided keep or discard), else a
    failed trial (it crashed, was refused, or the iteration went to another proposal). Idempotent."""
    finished = {r.iteration: r for r in history if r.finished}
    told = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record = finished.get(trial.user_attrs.get(ITERATION_ATTR))
        if record is None:
            continue
        # the iteration's memory names its trial; only an optuna proposal's memory is believed (another proposer's,
        # a language model's say, could name any trial and have its score told for parameters it never trained)
        ours = record.proposer == OptunaProposer.name and record.memory.get("trial") == trial.number
        scored = record.status == Status.OK and record.val_accuracy is not None
        decided = record.verdict in (Verdict.KEEP, Verdict.DISCARD)
        optuna.Trial(study, trial._trial_id).set_user_attr(VERDICT_ATTR, str(record.verdict) if ours else "other")
        if ours and scored and decided:
            study.tell(trial.number, record.val_accuracy)
        else:
            study.tell(trial.number, state=TrialState.FAIL)
        told += 1
    return told


def best_region(trials: list[FrozenTrial], space: dict[str, BaseDistribution]) -> dict[str, str]:
    """The range (or the values) of each constant among the best quarter of the complete trials."""
    ranked = sorted(trials, key=lambda t: t.value, reverse=True)
    top = ranked[: max(1, round(len(ranked) * BEST_REGION_QUANTILE))]
    region = {}
    for name in space:
        values = [t.params[name] for t in top if name in t.params]
        if not values:
            continue
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            region[name] = f"{min(values):.4g} to {max(values):.4g}"
        else:
            region[name] = "{" + ", ".join(sorted({repr(v) for v in values})) + "}"
    return region


def importances(study: optuna.Study, complete: list[FrozenTrial]) -> dict[str, float]:
    """PED-ANOVA importances (no scikit-learn needed), or {} while too few trials are complete."""
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE or len({t.value for t in complete}) < 2:
        return {}
    try:
        return get_param_importances(study, evaluator=PedAnovaImportanceEvaluator(target_quantile=BEST_REGION_QUANTILE))
    except (ValueError, RuntimeError, ZeroDivisionError):  # degenerate values: a ranking it cannot make
        return {}


def lessons_of(study: optuna.Study, space: dict[str, BaseDistribution], sampler: str, after: int) -> tuple[str, str]:
    """(the Strategy section, the lessons) from the study as it stands."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = sum(t.state == TrialState.FAIL for t in trials)
    kept = sum(t.user_attrs.get(VERDICT_ATTR) == str(Verdict.KEEP) for t in complete)
    lines = [
        f"Optuna search ({sampler} sampler), revised after iteration {after}: {len(trials)} trials, "
        f"{len(complete)} measured, {failed} failed, {kept} kept by the loop.",
        "",
        "Each proposal is one trial: every searched constant is drawn at once, and the loop's measured mean goes "
        "back to the study. The search space is fixed at the study's start:",
        "",
    ]
    lines += [f"- {name}: {describe(d)}" for name, d in space.items()]
    lessons = []
    if complete:
        best = max(complete, key=lambda t: t.value)
        setting = ", ".join(f"{k}={_rounded(v)}" for k, v in best.params.items())
        mean = statistics.fmean(t.value for t in complete)
        lines += [
            "",
            f"Best measured: trial {best.number} (iteration {best.user_attrs.get(ITERATION_ATTR)}), "
            f"{best.value:.4f} ({best.user_attrs.get(VERDICT_ATTR, '?')}): {setting}. Mean of the measured trials "
            f"{mean:.4f}.",
            "",
            f"Best region (the best {BEST_REGION_QUANTILE:.0%} of measured trials):",
        ]
        region = best_region(complete, space)
        lines += [f"- {name}: {where}" for name, where in region.items()]
        lessons.append(f"best trial {best.number}: {best.value:.4f} with {setting}")
        ranked = importances(study, complete)
        if ranked:
            lines += ["", "Importances (PED-ANOVA, share of the score's variation):"]
            lines += [f"- {name}: {share:.2f}" for name, share in ranked.items()]
            top = next(iter(ranked))
            lessons.append(f"{top} matters most (importance {ranked[top]:.2f}); best region {region.get(top, '?')}")
    return "\n".join(lines) + "\n", "\n".join(lessons) or "no trial measured yet"
