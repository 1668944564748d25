"""Integrations: where notifications go (webhook, Slack, Teams, PagerDuty, Alertmanager,
e-mail), each with its configuration as JSON.

Revision ID: 0009 (after 0008, monitor groups)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"  # 0008: monitor groups
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "integration",
        sa.Column("guid", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(40), nullable=True),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("revision", sa.String(32), nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("modified_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("integration")
