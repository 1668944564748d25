"""Monitor groups (with the built-in All Monitors group) and maintenance period ids.

Revision ID: 0008
"""

from __future__ import annotations

import time
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    group = op.create_table(
        "monitor_group",
        sa.Column("guid", sa.String(36), primary_key=True),
        sa.Column("description", sa.String(200), nullable=False, unique=True),
        sa.Column("is_all", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "monitor_group_member",
        sa.Column(
            "group_guid",
            sa.String(36),
            sa.ForeignKey("monitor_group.guid", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "monitor_guid",
            sa.String(36),
            sa.ForeignKey("monitor.guid", ondelete="CASCADE"),
            primary_key=True,
        ),
    )
    op.create_index("ix_monitor_group_member_monitor", "monitor_group_member", ["monitor_guid"])
    op.create_table(
        "maintenance_period_id",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("monitor_guid", sa.String(36), nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    # the account's built-in group of every monitor, with a guid of its own as in Uptrends
    assert group is not None
    op.bulk_insert(
        group,
        [
            {
                "guid": str(uuid.uuid4()),
                "description": "All Monitors",
                "is_all": True,
                "created_us": time.time_ns() // 1000,
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("maintenance_period_id")
    op.drop_index("ix_monitor_group_member_monitor", "monitor_group_member")
    op.drop_table("monitor_group_member")
    op.drop_table("monitor_group")
