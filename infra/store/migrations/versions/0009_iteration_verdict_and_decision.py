"""iterations.verdict and iterations.decision: each column named for what it holds

`decision` held the verdict (keep, discard, baseline) while the decision itself (the rule's numbers, the runs it
rested on, the incumbent it compared with) was in `rule`, a name the experiment's acceptance-rule settings also
use. Now `verdict` holds the verdict and `decision` the decision (infra/records.py DecisionRecord). The data is
kept as it is: only the names change.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("iterations") as batch:  # one after the other: the second takes the first's old name
        batch.alter_column("decision", new_column_name="verdict")
    with op.batch_alter_table("iterations") as batch:
        batch.alter_column("rule", new_column_name="decision")


def downgrade() -> None:
    with op.batch_alter_table("iterations") as batch:
        batch.alter_column("decision", new_column_name="rule")
    with op.batch_alter_table("iterations") as batch:
        batch.alter_column("verdict", new_column_name="decision")
