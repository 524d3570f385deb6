"""pool_jobs, and measured_runs.worker: runs measured on other machines

A pool's worker (infra/pool/) claims a job here by its id when it starts it, beats while it runs and writes its
answer when done; the coordinator reads the jobs it has in flight: an answer it checks (infra/pool/protocol.py
accept) and takes, a beat that stopped says the worker died. A measured run records the worker that made it (''
for a run made on the coordinator's own slots, and for every older run).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pool_jobs",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("beat_at", sa.DateTime(), nullable=False),
        sa.Column("answer", sa.LargeBinary(), nullable=True),
        sa.Column("answered_at", sa.DateTime(), nullable=True),
    )
    with op.batch_alter_table("measured_runs") as batch:
        batch.add_column(sa.Column("worker", sa.String(200), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("measured_runs") as batch:
        batch.drop_column("worker")
    op.drop_table("pool_jobs")
