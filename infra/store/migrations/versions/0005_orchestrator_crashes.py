"""iterations.orchestrator_crashes: how often the orchestrator died while this iteration ran

A run that starts and finds the next iteration's row left `running` knows the previous orchestrator
died in it (a SIGKILL, an out-of-memory kill, a crashed machine) and counts it here. At the
experiment's crash_limit the iteration is recorded as failed and skipped (flows/research.py's loop
guard), so one poisonous candidate cannot crash-loop a night away.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("iterations") as batch:
        batch.add_column(sa.Column("orchestrator_crashes", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("iterations") as batch:
        batch.drop_column("orchestrator_crashes")
