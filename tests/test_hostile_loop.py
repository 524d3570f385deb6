"""
Hostile candidates inside the research loop (Prefect flow, SQLite store, git workspace, synthetic data):
each is recorded with a non-ok status and a clear reason, or scored honestly, and the loop goes on;
afterwards the store and the workspace are intact and no label reached the store, a log or the prompt.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import prepare
from infra.research.workspace import GIT_SAFETY, Workspace
from infra.settings import BASELINE_TRAIN_PY
from infra.store import Store
from tests.conftest import requires_bwrap
from tests.test_hostile_candidates import sandbox_user_processes

pytestmark = requires_bwrap

SAVE = (
    "from prepare import save_model\nfrom torch import nn\n"
    "save_model(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))\n"
)
CANDIDATES = {
    "01_weird_output.py": "# prints numbers that would crash a trusting parser\n"
    "print('epochs: \\u00b2')\nprint('epochs: 99999999999999999999')\nprint('x' * 100000)\n" + SAVE,
    "02_symlinked_model.py": "# a model that is a link to a host file\nimport os\n"
    "os.symlink('/etc/passwd', 'model.safetensors')\n",
    "03_wants_labels.py": "# reads the validation labels\nimport prepare\nprepare.load_split('val')\n",
    "04_overtime.py": "# trains past its deadline, never asking the budget\nimport os, time\n"
    "from prepare import budget_clock\n"
    "deadline = float(os.environ['AUTORESEARCH_DEADLINE'])\n"
    "while budget_clock() < deadline + 10:\n    pass\n" + SAVE,
    "05_traps.py": "# leaves links named like the orchestrator's files, then saves a real model\nimport os\n"
    "for name in ('train.log', 'eval', 'seed-5000', 'logits.npy'):\n"
    "    os.symlink('/proc/self/environ', name)\nos.mkfifo('eval.log')\n" + SAVE,
}


def test_hostile_candidates_are_recorded_and_the_loop_goes_on(tmp_path, synthetic_data, prefect_harness):
    from flows.research import research

    replay = tmp_path / "replay"
    replay.mkdir()
    for name, code in CANDIDATES.items():
        (replay / name).write_text(code)
    home = tmp_path / "runs"
    db_url = f"sqlite:///{home / 'autoresearch.db'}"
    config = dict(
        name="hostile",
        iterations=len(CANDIDATES),
        budget_s=1.0,
        proposer=f"replay:{replay}",
        revise_every=100,
        repeats=1,
        home=str(home),
        db_url=db_url,
        baseline_path=str(BASELINE_TRAIN_PY),
        export_allowance_s=3.0,
    )
    research(config)

    store = Store(db_url)
    exp = store.experiment("hostile")
    rows = store.iterations(exp.id)
    assert [r.index for r in rows] == list(range(len(CANDIDATES) + 1))
    assert all(r.finished_at is not None for r in rows), "an iteration was left unfinished"
    by_index = {r.index: r for r in rows}
    assert by_index[1].status == "ok" and by_index[1].epochs is None
    assert by_index[2].status == "invalid" and "not a regular file" in by_index[2].reason
    assert by_index[3].status == "crashed" and "'val' split is not available" in by_index[3].reason
    assert by_index[4].status == "timeout" and "past its deadline" in by_index[4].reason
    assert by_index[5].status == "ok", by_index[5].reason
    assert all(r.verdict != "keep" for r in rows[2:5])
    assert exp.config["startup_allowance_s"] > 0  # measured once, stored with the experiment

    # the store is consistent, the workspace's git intact and in agreement with it
    with sqlite3.connect(home / "autoresearch.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    ws = Workspace(home / "hostile")
    fsck = subprocess.run(["git", *GIT_SAFETY, "fsck", "--strict"], cwd=ws.root, capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr
    assert ws.committed_iterations() == [r.index for r in rows if r.verdict in ("baseline", "keep")]
    assert sandbox_user_processes() == []
    for row in rows[1:]:  # a decided iteration keeps its first run's model only if it was kept
        models = list(ws.iteration_dir(row.index).glob(f"*/{prepare.MODEL_ARTIFACT}"))
        assert len(models) == (1 if row.verdict == "keep" else 0), (row.index, models)

    # no label reached the store or any log: look for the label sequences as the digits they are
    stored = (home / "autoresearch.db").read_bytes() + b"".join(p.read_bytes() for p in home.rglob("*.log"))
    for split in ("val", "test"):
        labels = [str(int(v)) for v in prepare.load_split_uint8(split)[1][:40]]
        for separator in ("", ", ", " ", ","):
            assert separator.join(labels).encode() not in stored, f"{split} labels found"
    history = Path(ws.root / "train.py").read_text()
    assert "load_split('val')" not in history  # the incumbent is never a hostile candidate
