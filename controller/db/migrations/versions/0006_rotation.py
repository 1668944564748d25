"""Concurrent monitoring: a check is a plain check, a partial check or a concurrent check.

Revision ID: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # 0 a check, 1 a partial check of a concurrent slot, 2 the slot's concurrent check
    op.add_column(
        "monitor_check",
        sa.Column("check_kind", sa.SmallInteger, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    with op.batch_alter_table("monitor_check") as batch:
        batch.drop_column("check_kind")
