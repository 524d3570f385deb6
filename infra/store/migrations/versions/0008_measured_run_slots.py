"""measured_runs.slot and started_at: which measurement slot made a run, and when it began

With several slots (infra/sandbox/slots.py) runs overlap: a run's slot and its start (its end is made_at) say
which ran beside which. Older runs were made one at a time in the only slot: slot 0, started unknown (NULL).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("measured_runs") as batch:
        batch.add_column(sa.Column("slot", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("started_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("measured_runs") as batch:
        batch.drop_column("started_at")
        batch.drop_column("slot")
