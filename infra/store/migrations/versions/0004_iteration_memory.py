"""iterations.expected_effect and iterations.memory: the proposer's expected effect, and what it remembers of its move

memory is structured data the proposer asked to keep with the iteration (the offline searcher: which constant
it moved, from what to what, by which step), so no proposer has to recover its own moves from prose. Rows
the offline searcher wrote before this column existed get theirs from their hypothesis, once, here.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import json
import re

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

OFFLINE_HYPOTHESIS = re.compile(r"^Set (\w+) from (\S+) to (\S+)")


def _number(text: str) -> bool | int | float | str:
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def upgrade() -> None:
    with op.batch_alter_table("iterations") as batch:
        batch.add_column(sa.Column("expected_effect", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("memory", sa.JSON(), nullable=False, server_default="{}"))
    connection = op.get_bind()
    rows = connection.execute(sa.text("SELECT id, hypothesis FROM iterations WHERE proposer = 'offline'")).fetchall()
    for row_id, hypothesis in rows:
        match = OFFLINE_HYPOTHESIS.match(hypothesis or "")
        if match:
            memory = {"constant": match.group(1), "old": _number(match.group(2)), "new": _number(match.group(3))}
            connection.execute(
                sa.text("UPDATE iterations SET memory = :memory WHERE id = :id"),
                {"memory": json.dumps(memory), "id": row_id},
            )


def downgrade() -> None:
    with op.batch_alter_table("iterations") as batch:
        batch.drop_column("memory")
        batch.drop_column("expected_effect")
