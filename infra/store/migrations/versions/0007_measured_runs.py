"""measured_runs: every measured run, stored as it finishes and numbered by the store

The sequential keep rule (infra/research/acceptance_rule.py) asks for runs one at a time, of the candidate
and of the incumbent, and a decision interrupted between two of them resumes with the runs it has: each run
is a row the moment it is measured. seq numbers an experiment's runs (the night's clock: an incumbent's run
is current within a window of them); iteration is whose code was measured, decided_in the decision that asked.

Older experiments kept their runs only in iterations.runs: they are copied here, in iteration order.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

RUN_FIELDS = ("seed", "status", "val_accuracy", "epochs", "train_seconds", "inference_seconds", "epochs_per_second")


def upgrade() -> None:
    table = op.create_table(
        "measured_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("experiment_id", sa.Integer(), sa.ForeignKey("experiments.id"), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("decided_in", sa.Integer(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("val_accuracy", sa.Float(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("val_loss", sa.Float(), nullable=True),
        sa.Column("epochs", sa.Integer(), nullable=True),
        sa.Column("train_seconds", sa.Float(), nullable=True),
        sa.Column("wall_seconds", sa.Float(), nullable=True),
        sa.Column("inference_seconds", sa.Float(), nullable=True),
        sa.Column("contended", sa.Boolean(), nullable=False),
        sa.Column("remeasured", sa.Boolean(), nullable=False),
        sa.Column("compute", sa.JSON(), nullable=False),
        sa.Column("made_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("experiment_id", "seq", name="uq_measured_run"),
    )
    iterations = sa.table(
        "iterations",
        sa.column("experiment_id", sa.Integer()),
        sa.column("index", sa.Integer()),
        sa.column("runs", sa.JSON()),
        sa.column("started_at", sa.DateTime()),
    )
    rows, seq = [], {}
    bind = op.get_bind()
    query = sa.select(iterations).order_by(iterations.c.experiment_id, iterations.c["index"])
    for experiment_id, index, runs, started_at in bind.execute(query):
        runs = runs or []
        for n, run in enumerate(runs):
            seq[experiment_id] = seq.get(experiment_id, 0) + 1
            rows.append(
                {
                    "experiment_id": experiment_id,
                    "seq": seq[experiment_id],
                    "iteration": index,
                    "decided_in": index,
                    "seed": int(run.get("seed") or 0),
                    "status": str(run.get("status", "")),
                    "val_accuracy": run.get("val_accuracy"),
                    "reason": "",
                    "val_loss": None,
                    "wall_seconds": None,
                    "epochs": run.get("epochs"),
                    "train_seconds": run.get("train_seconds"),
                    "inference_seconds": run.get("inference_seconds"),
                    "contended": bool(run.get("contended")),
                    # measured again with the same seed (the old loop appended every attempt)
                    "remeasured": bool(run.get("contended"))
                    and n + 1 < len(runs)
                    and runs[n + 1].get("seed") == run.get("seed"),
                    "compute": {k: v for k, v in run.items() if k not in RUN_FIELDS},
                    "made_at": started_at,
                }
            )
    if rows:
        op.bulk_insert(table, rows)


def downgrade() -> None:
    op.drop_table("measured_runs")
