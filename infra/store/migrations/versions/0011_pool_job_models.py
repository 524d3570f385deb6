"""pool_jobs.model: the model a worker brings back for a run the coordinator may keep

A worker writes the model file of a candidate's first run (the run whose model a keep would keep) with its answer,
bounded (infra/pool/protocol.py MAX_POOL_MODEL_BYTES); the coordinator copies it into the run's directory, as a run
on its own slots leaves it, and forgets it with the job.

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


def upgrade() -> None:
    with op.batch_alter_table("pool_jobs") as batch:
        batch.add_column(sa.Column("model", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pool_jobs") as batch:
        batch.drop_column("model")
