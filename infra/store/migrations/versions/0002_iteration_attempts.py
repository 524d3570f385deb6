"""iterations.attempts: every pre-flight and fix attempt of an iteration

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("iterations") as batch:
        batch.add_column(sa.Column("attempts", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("iterations") as batch:
        batch.drop_column("attempts")
