"""Per-type check details (HTTP response headers, waterfall) beside the attributes.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("monitor_check") as batch:
        batch.add_column(sa.Column("details", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("monitor_check") as batch:
        batch.drop_column("details")
