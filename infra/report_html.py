"""
The morning report (`autoresearch report NAME`): one self-contained HTML page per experiment.

The progress plot is embedded as a data: URI and the style is inline, so the file can be mailed or
opened anywhere offline. Everything a candidate or a model wrote (hypothesis, expected effect, reason,
diff, strategy, lessons) is hostile text: it reaches the page only through html.escape.
Plain string templates: a page this small needs no template engine.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape

from infra.plot import progress_png
from infra.records import IterationRecord, Status, Verdict, incumbent_of
from infra.research.code_edit import unified_diff

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #eee; padding: 4px 6px; text-align: left; vertical-align: top; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.keep, tr.baseline { background: #eefbea; } tr.failed { background: #fdf0f0; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 12px; }
.add { color: #17692b; } .del { color: #a3161b; } .hunk { color: #6f42c1; }
.summary td:first-child { color: #555; width: 18em; }
"""


@dataclass(frozen=True)
class Strategy:
    """One version of program.md's Strategy section, as the report shows it."""

    version: int
    after_iteration: int
    text: str
    lessons: str


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def diff_html(diff: str) -> str:
    """A unified diff, escaped line by line, additions and deletions coloured."""
    lines = []
    for line in diff.splitlines():
        css = (
            "hunk"
            if line.startswith("@@")
            else ""
            if line.startswith(("+++", "---"))
            else "add"
            if line.startswith("+")
            else "del"
            if line.startswith("-")
            else ""
        )
        lines.append(f'<span class="{css}">{escape(line)}</span>' if css else escape(line))
    return "<pre>" + "\n".join(lines) + "</pre>"


def decision_cell(r: IterationRecord) -> str:
    """The verdict and the numbers it rested on (acceptance_rule.summary's form)."""
    numbers = r.decision.line()
    return f"{escape(r.verdict or '-')} ({escape(numbers)})" if numbers else escape(r.verdict or "-")


def iteration_rows(records: list[IterationRecord]) -> str:
    rows = []
    for r in records:
        css = r.verdict if r.kept else "failed" if r.status not in (Status.OK, Status.RUNNING) else ""
        why = r.reason if r.status != Status.OK else ""  # an ok run's reason says nothing
        rows.append(
            f'<tr class="{escape(css)}"><td class="num">{r.iteration}</td><td>{escape(r.status)}</td>'
            f'<td class="num">{decision_cell(r)}</td><td class="num">{_num(r.val_accuracy)}</td>'
            f'<td class="num">{_num(r.test_accuracy)}</td><td class="num">${r.cost_usd:.4f}</td>'
            f"<td>{escape(r.hypothesis)}</td><td>{escape(r.expected_effect)}</td><td>{escape(why)}</td></tr>"
        )
    return "\n".join(rows)


def kept_changes(records: list[IterationRecord], diffs: dict[int, str]) -> str:
    parts = []
    for r in records:
        if r.verdict == Verdict.KEEP:
            parts.append(
                f"<h3>Iteration {r.iteration}: {escape(r.hypothesis)}</h3>"
                f"<p>validation {_num(r.val_accuracy)} ({escape(r.decision.line())}), "
                f"test {_num(r.test_accuracy)}</p>{diff_html(diffs.get(r.iteration, ''))}"
            )
    return "\n".join(parts) or "<p>No change was kept: the baseline is still the best.</p>"


def strategy_versions(strategies: list[Strategy]) -> str:
    parts = []
    for previous, current in zip([None, *strategies], strategies):
        head = f"<h3>Version {current.version} (after iteration {current.after_iteration})</h3>"
        lessons = f"<p><b>Lessons:</b> {escape(current.lessons)}</p>" if current.lessons else ""
        if previous is None:
            body = f"<pre>{escape(current.text)}</pre>"
        else:
            body = diff_html(
                unified_diff(
                    previous.text + "\n",
                    current.text + "\n",
                    f"strategy v{previous.version}",
                    f"strategy v{current.version}",
                )
            )
        parts.append(head + lessons + body)
    return "\n".join(parts) or "<p>No strategy recorded.</p>"


def summary(records: list[IterationRecord], total_cost: float) -> str:
    """The best model, its validation/test gap, and what the experiment cost."""
    finished = [r for r in records if r.finished]
    kept = [r for r in finished if r.kept]
    best = incumbent_of(records)
    gap = (
        best.val_accuracy - best.test_accuracy
        if best and best.val_accuracy is not None and best.test_accuracy is not None
        else None
    )
    rows = [
        ("iterations finished", f"{len(finished)} (of which {max(0, len(kept) - 1)} kept after the baseline)"),
        ("best", f"iteration {best.iteration}: {escape(best.hypothesis)}" if best else "-"),
        ("best validation accuracy", _num(best.val_accuracy) if best else "-"),
        ("best held-out test accuracy", _num(best.test_accuracy) if best else "-"),
        ("validation - test gap of the best", _num(gap, "+.4f")),
        ("proposer cost in total", f"${total_cost:.4f}"),
    ]
    return '<table class="summary">' + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows) + "</table>"


def render(
    experiment: str,
    status: str,
    records: list[IterationRecord],
    diffs: dict[int, str],
    strategies: list[Strategy],
    total_cost: float,
) -> str:
    """The whole page. diffs: each iteration's diff against the incumbent it was proposed to."""
    png = progress_png(records, f"{experiment}: validation accuracy per iteration")
    plot = f"data:image/png;base64,{base64.b64encode(png).decode()}"
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(experiment)}: autoresearch report</title>
<style>{STYLE}</style></head>
<body>
<h1>{escape(experiment)}</h1>
<p>status {escape(status)}; report made {made}</p>
{summary(records, total_cost)}
<h2>Progress</h2>
<img id="progress-plot" alt="validation accuracy per iteration" src="{plot}">
<h2>Iterations</h2>
<table id="iterations">
<tr><th>it</th><th>status</th><th>decision (delta, how sure, runs, what a keep needed)</th>
<th>val</th><th>test</th><th>cost</th>
<th>hypothesis</th><th>expected effect</th><th>why it failed</th></tr>
{iteration_rows(records)}
</table>
<h2>Kept changes</h2>
{kept_changes(records, diffs)}
<h2>Strategy versions</h2>
{strategy_versions(strategies)}
</body></html>
"""


def report_for(store, experiment: str) -> str:
    """The report of an experiment in store (infra/store Store); KeyError if there is none of that name."""
    exp = store.experiment(experiment)
    if exp is None:
        raise KeyError(experiment)
    diffs = {row.index: row.diff for row in store.iterations(exp.id)}
    strategies = [Strategy(s.version, s.after_iteration, s.text, s.lessons) for s in store.strategies(exp.id)]
    return render(experiment, exp.status, store.records(exp.id), diffs, strategies, store.total_cost(exp.id))
