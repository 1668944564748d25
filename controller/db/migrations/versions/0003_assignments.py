"""Assignment history: when each monitor was placed on each agent, so results are accepted
only from the agent that had the monitor at the result's scheduled time.

Revision ID: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "assignment_history",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("monitor_guid", sa.String(36), nullable=False),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("start_us", sa.BigInteger, nullable=False),
        sa.Column("end_us", sa.BigInteger, nullable=True),
    )
    op.create_index(
        "ix_assignment_history_monitor_agent", "assignment_history", ["monitor_guid", "agent_id"]
    )
    # what is assigned today has been since an unknown time: from the beginning
    op.execute(
        "INSERT INTO assignment_history (monitor_guid, agent_id, start_us, end_us) "
        "SELECT monitor_guid, agent_id, 0, NULL FROM assignment"
    )


def downgrade() -> None:
    op.drop_index("ix_assignment_history_monitor_agent", "assignment_history")
    op.drop_table("assignment_history")
