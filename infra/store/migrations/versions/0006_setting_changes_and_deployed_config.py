"""setting_changes: a fixed setting changed on resume (--change-rule); experiments.deployed_config

setting_changes records each change of a setting that is otherwise fixed for an experiment (its
acceptance rule, its proposer), asked for explicitly with `autoresearch run --change-rule`: which
setting, its value before and after, and after which iteration. `history` and the research log show it.

experiments.deployed_config is the configuration `autoresearch deploy` gave the experiment's scheduled
runs: a deployment's run takes the experiment's name only and reads its configuration here, so nobody
can hand a scheduled run another home, proposer or rule through the Prefect API.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "setting_changes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("experiment_id", sa.Integer(), sa.ForeignKey("experiments.id"), nullable=False),
        sa.Column("setting", sa.String(32), nullable=False),
        sa.Column("old", sa.JSON(), nullable=True),
        sa.Column("new", sa.JSON(), nullable=True),
        sa.Column("after_iteration", sa.Integer(), nullable=False),
        sa.Column("changed_at", sa.DateTime(), nullable=False),
    )
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("deployed_config", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("deployed_config")
    op.drop_table("setting_changes")
