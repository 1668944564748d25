"""Dead letters: results the database refused, kept with the reason.

Revision ID: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "dead_letter",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("received_us", sa.BigInteger, nullable=False),
        sa.Column("agent_id", sa.Text, nullable=False),
        sa.Column("batch_id", sa.Text, nullable=False),
        sa.Column("result_uid", sa.Text, nullable=True),
        sa.Column("monitor_guid", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    )
    op.create_index("ix_dead_letter_received", "dead_letter", ["received_us"])


def downgrade() -> None:
    op.drop_index("ix_dead_letter_received", table_name="dead_letter")
    op.drop_table("dead_letter")
