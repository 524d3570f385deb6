"""`autoresearch report NAME`: a self-contained page of a finished experiment; hostile stored text stays text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from infra.store import Store, utcnow
from tests.conftest import requires_chromium
from tests.headless_chromium import distinct_colours, dump_dom, screenshot
from tests.test_cli_run import cli

HOSTILE = "<script>alert(1)</script>"
# if this ran, the page's title would change: the DOM after the scripts would show it
HOSTILE_IMG = "<img src=x onerror=\"document.title='pwned'\">"
BASELINE = "LR = 0.1\nBATCH = 32\n"
KEPT = "LR = 0.05\nBATCH = 32\n"


@pytest.fixture
def finished(tmp_path) -> Path:
    """A home whose store holds a finished experiment: baseline, a kept change, a hostile discard, a crash."""
    home = tmp_path / "runs"
    store = Store(f"sqlite:///{home / 'autoresearch.db'}")
    exp = store.ensure_experiment("morning", {"budget_s": 5.0})
    store.put_iteration(
        exp.id,
        0,
        status="ok",
        verdict="baseline",
        hypothesis="baseline",
        code=BASELINE,
        diff="",
        val_accuracy=0.83,
        test_accuracy=0.82,
        measurements=[0.83, 0.831],
        finished_at=utcnow(),
    )
    store.put_iteration(
        exp.id,
        1,
        status="ok",
        verdict="keep",
        hypothesis="halve the learning rate",
        expected_effect="+0.5 points",
        code=KEPT,
        diff="--- a\n+++ b\n@@ -1 +1 @@\n-LR = 0.1\n+LR = 0.05\n",
        decision={"delta": 0.012, "threshold": 0.004},
        val_accuracy=0.842,
        test_accuracy=0.835,
        measurements=[0.842, 0.843],
        finished_at=utcnow(),
    )
    store.put_iteration(
        exp.id,
        2,
        status="ok",
        verdict="discard",
        hypothesis=HOSTILE,
        expected_effect=HOSTILE_IMG,
        code=KEPT + "# </pre>" + HOSTILE,
        diff=f"+# </pre>{HOSTILE}\n",
        decision={"delta": -0.003, "threshold": 0.004},
        val_accuracy=0.839,
        finished_at=utcnow(),
    )
    store.put_iteration(
        exp.id,
        3,
        status="crashed",
        verdict="discard",
        hypothesis="bigger batch",
        reason=f"RuntimeError: {HOSTILE_IMG}",
        finished_at=utcnow(),
    )
    store.add_strategy(exp.id, 0, 0, "Tune the learning rate first.", "initial strategy")
    store.add_strategy(exp.id, 1, 2, f"Try batch sizes next. {HOSTILE}", f"learning rate done {HOSTILE_IMG}")
    store.add_proposer_call(exp.id, 1, cost_usd=0.25)
    store.add_proposer_call(exp.id, 2, cost_usd=0.5)
    store.set_experiment(exp.id, status="finished")
    return home


def make_report(home: Path, out: Path) -> str:
    done = cli("report", "morning", "--out", str(out), home=home)
    assert done.returncode == 0, done.stderr
    assert f"report: {out}" in done.stdout
    return out.read_text()


def test_report_holds_everything_and_escapes_what_candidates_wrote(finished, tmp_path):
    page = make_report(finished, tmp_path / "report.html")
    assert "<script" not in page.lower() and "onerror=" not in page.replace("onerror=&quot;", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&quot;document.title=&#x27;pwned&#x27;&quot;&gt;" in page
    assert page.count("</pre>") == page.count("<pre>")  # the diff's "</pre>" did not close the block
    assert re.search(r'<img id="progress-plot"[^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', page)
    iterations = page.split('<table id="iterations">')[1].split("</table>")[0]
    assert iterations.count("<tr") == 5  # header and four iterations
    # decisions of the rule before the sequential one show their delta and threshold, in points
    assert "keep (+1.20 points, threshold 0.40 (the earlier rule))" in iterations
    assert "discard (-0.30 points, threshold 0.40 (the earlier rule))" in iterations
    assert "0.8420" in iterations and "0.8350" in iterations and "$0.2500" in iterations and "+0.5 points" in iterations
    assert '<span class="add">+LR = 0.05</span>' in page  # the kept change's diff
    assert "Tune the learning rate first." in page and '<span class="add">+Try batch sizes next.' in page
    assert "$0.7500" in page  # the total cost
    assert "+0.0070" in page  # the best model's validation - test gap: 0.842 - 0.835


def test_report_default_path_and_unknown_experiment(finished):
    done = cli("report", "morning", home=finished)
    assert done.returncode == 0 and (finished / "morning" / "report.html").is_file()
    missing = cli("report", "nope", home=finished)
    assert missing.returncode == 1 and "no experiment named 'nope'" in missing.stderr
    assert cli("report", "../escape", home=finished).returncode == 2


@requires_chromium
def test_report_renders_in_chromium(finished, tmp_path):
    out = tmp_path / "report.html"
    make_report(finished, out)
    dom = dump_dom(out.as_uri(), virtual_time_ms=2000)
    assert "<title>morning: autoresearch report</title>" in dom  # no injected handler renamed the page
    assert re.search(r'<img id="progress-plot"[^>]*src="data:image/png;base64,', dom)
    assert dom.split('<table id="iterations">')[1].count("<tr") == 5
    assert "halve the learning rate" in dom and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    pixels = screenshot(out.as_uri(), tmp_path / "report.png", virtual_time_ms=2000)
    assert pixels.shape[0] >= 900 and pixels.shape[1] >= 1300
    assert distinct_colours(pixels) > 50  # text, table shading and the plot: not a blank page
