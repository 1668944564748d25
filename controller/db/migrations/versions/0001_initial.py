"""Initial schema: regions, checkpoints, servers, operators, API accounts, monitors, checks.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "region",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
    )
    op.create_table(
        "checkpoint",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("code", sa.String(100), nullable=False),
        sa.Column("region_id", sa.Integer, sa.ForeignKey("region.id"), nullable=False),
    )
    op.create_table(
        "server",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("agent_id", sa.String(64), nullable=False, unique=True),
        sa.Column("checkpoint_id", sa.Integer, sa.ForeignKey("checkpoint.id"), nullable=False),
        sa.Column("ipv4", sa.Text, nullable=False, server_default="[]"),
        sa.Column("ipv6", sa.Text, nullable=False, server_default="[]"),
        sa.Column("version", sa.String(50), nullable=False, server_default=""),
        sa.Column("probe_types", sa.Text, nullable=False, server_default="[]"),
        sa.Column("capacity", sa.Integer, nullable=False, server_default="1000"),
        sa.Column("online", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("first_seen_us", sa.BigInteger, nullable=False),
        sa.Column("last_seen_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "operator",
        sa.Column("guid", sa.String(36), primary_key=True),
        sa.Column("username", sa.String(200), nullable=False, unique=True),
        sa.Column("full_name", sa.String(200), nullable=False),
        sa.Column("password_hash", sa.String(300), nullable=False),
        sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "api_account",
        sa.Column("username", sa.String(64), primary_key=True),
        sa.Column("password_hash", sa.String(300), nullable=False),
        sa.Column(
            "operator_guid",
            sa.String(36),
            sa.ForeignKey("operator.guid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("description", sa.String(200), nullable=False, server_default="API"),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "monitor",
        sa.Column("guid", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("monitor_type", sa.String(40), nullable=False),
        sa.Column("is_active", sa.Boolean, nullable=False),
        sa.Column("definition", sa.Text, nullable=False),
        sa.Column("revision", sa.String(32), nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("modified_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "assignment",
        sa.Column("monitor_guid", sa.String(36), primary_key=True),
        sa.Column("agent_id", sa.String(64), primary_key=True),
        sa.Column("revision", sa.String(32), nullable=False),
    )
    op.create_table(
        "monitor_check",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(32), nullable=False, unique=True),
        sa.Column("monitor_guid", sa.String(36), nullable=False),
        sa.Column("server_id", sa.Integer, nullable=True),
        sa.Column("ts_us", sa.BigInteger, nullable=False),
        sa.Column("scheduled_us", sa.BigInteger, nullable=False),
        sa.Column("error_level", sa.SmallInteger, nullable=False),
        sa.Column("error_code", sa.Integer, nullable=False),
        sa.Column("attributes", sa.Text, nullable=False),
        sa.Column("response_body", sa.Text, nullable=True),
    )
    op.create_index("ix_monitor_check_monitor_ts", "monitor_check", ["monitor_guid", "ts_us", "id"])


def downgrade() -> None:
    for table in (
        "monitor_check",
        "assignment",
        "monitor",
        "api_account",
        "operator",
        "server",
        "checkpoint",
        "region",
    ):
        op.drop_table(table)
