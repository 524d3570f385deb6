"""Task: the Prefect artifacts a researcher reads in the morning.

The UI renders markdown: everything a proposer or a candidate wrote goes in as a code span or a fenced
block (infra/display.py), so it is shown as written and never rendered as a link, an image or HTML; a
table cell is one cleaned, bounded line."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE

from infra import display, operator_files
from infra.plot import progress_png
from infra.records import IterationRecord, incumbent_of
from infra.research.code_edit import unified_diff

TABLE_COLUMNS = (
    "iteration",
    "status",
    "verdict",
    "how_decided",
    "val_accuracy",
    "test_accuracy",
    "cost_usd",
    "change_type",
    "hypothesis",
    "reason",
)


@dataclass(frozen=True)
class Report:
    """What the artifacts are made from: the experiment's history and where it stands."""

    experiment: str
    history: list[IterationRecord]  # every finished iteration, oldest first
    target: int  # the iteration the run works towards: the progress bar's 100%
    strategy: str  # the Strategy section in use
    baseline_code: str  # what the best is diffed against
    workspace: Path  # where progress.png is written


def artifact_key(experiment: str, what: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{experiment}-{what}".lower()).strip("-")


def _fmt(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else display.table_cell(value)


@task(name="report", task_run_name="report-{iteration}", cache_policy=NO_CACHE)
def publish_artifacts(report: Report, iteration: int) -> None:
    """The experiment's artifacts as of iteration (the task run's name)."""
    experiment, rows, total = report.experiment, report.history, report.target
    best = incumbent_of(rows)
    assert best is not None, "no baseline recorded yet"
    table = [{c: _fmt({**r.as_dict(), "how_decided": r.decision.line()}[c]) for c in TABLE_COLUMNS} for r in rows]
    create_table_artifact(table, key=artifact_key(experiment, "history"), description=f"{experiment}: every iteration")
    done = sum(1 for r in rows if r.finished and r.iteration > 0)
    create_progress_artifact(
        min(100.0, 100.0 * done / max(1, total)),
        key=artifact_key(experiment, "progress"),
        description=f"{done} of {total} iterations",
    )
    diff = unified_diff(report.baseline_code, best.code, "baseline/train.py", "best/train.py")
    diff = diff or "(the baseline itself)"
    create_markdown_artifact(
        f"# Best so far: iteration {best.iteration}\n\n"
        f"- validation accuracy (mean of {len(best.measurements)} runs): **{best.val_accuracy:.4f}**\n"
        f"- held-out test accuracy: {best.test_accuracy if best.test_accuracy is not None else 'n/a'}\n"
        f"- proposer cost so far: ${sum(r.cost_usd for r in rows):.4f}\n"
        f"- hypothesis: {display.code_span(best.hypothesis)}\n\n## Diff against the baseline\n\n"
        f"{display.code_block(diff, 'diff')}\n",
        key=artifact_key(experiment, "best"),
        description="the incumbent and its diff",
    )
    create_markdown_artifact(
        f"# Current strategy\n\n{display.code_block(report.strategy, 'markdown')}\n",
        key=artifact_key(experiment, "strategy"),
        description="program.md's Strategy section in use",
    )
    png = progress_png(rows, f"{experiment}: validation accuracy per iteration")
    operator_files.write_bytes(report.workspace / "progress.png", png)
    create_image_artifact(
        f"data:image/png;base64,{base64.b64encode(png).decode()}",
        key=artifact_key(experiment, "progress-plot"),
        description="progress.png",
    )


def publish_strategy_diff(experiment: str, version: int, old: str, new: str, lessons: str) -> None:
    """The change between two strategy versions, as markdown (called from the flow)."""
    diff = unified_diff(old + "\n", new + "\n", f"strategy v{version - 1}", f"strategy v{version}")
    create_markdown_artifact(
        f"# Strategy version {version}\n\n## Lessons\n\n{display.code_block(lessons)}\n\n"
        f"## Diff\n\n{display.code_block(diff, 'diff')}\n",
        key=artifact_key(experiment, "strategy-diff"),
        description=f"strategy v{version - 1} -> v{version}",
    )
