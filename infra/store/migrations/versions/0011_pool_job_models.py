"""pool_jobs.model: the model a worker brings back for a run the coordinator may keep; bounds on a claim's times

A worker writes the model file of a candidate's first run (the run whose model a keep would keep) with its answer,
bounded (infra/pool/protocol.py MAX_POOL_MODEL_BYTES); the coordinator copies it into the run's directory, as a run
on its own slots leaves it, and forgets it with the job. A claim's times must be ones every driver reads back (a
worker writing PostgreSQL's 'infinity' there stopped the coordinator reading its jobs).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


TIMES = (
    "started_at BETWEEN '2000-01-01' AND '9000-01-01' AND beat_at BETWEEN '2000-01-01' AND '9000-01-01' AND "
    "(answered_at IS NULL OR answered_at BETWEEN '2000-01-01' AND '9000-01-01')"
)  # infra/store/store.py POOL_TIMES_CHECK, as of this revision


def upgrade() -> None:
    with op.batch_alter_table("pool_jobs") as batch:
        batch.add_column(sa.Column("model", sa.LargeBinary(), nullable=True))
        batch.create_check_constraint("ck_pool_jobs_times", TIMES)


def downgrade() -> None:
    with op.batch_alter_table("pool_jobs") as batch:
        batch.drop_constraint("ck_pool_jobs_times", type_="check")
        batch.drop_column("model")
