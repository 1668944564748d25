"""Alert definitions: their four escalation levels, members (monitors, monitor groups), level
members (operators, operator groups) and level integrations; and the alerting revision that
tells every controller's cache of them that something changed.

Revision ID: 0011 (after 0010, assignment turns)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def _definition() -> sa.Column[str]:
    return sa.Column(
        "definition_guid",
        sa.String(36),
        sa.ForeignKey("alert_definition.guid", ondelete="CASCADE"),
        primary_key=True,
    )


def _reference(name: str, table: str) -> sa.Column[str]:
    return sa.Column(
        name, sa.String(36), sa.ForeignKey(f"{table}.guid", ondelete="CASCADE"), primary_key=True
    )


def upgrade() -> None:
    op.create_table(
        "alert_definition",
        sa.Column("guid", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("is_active", sa.Boolean, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("modified_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "escalation_level",
        _definition(),
        sa.Column("level", sa.SmallInteger, primary_key=True),
        sa.Column("is_active", sa.Boolean, nullable=False),
        sa.Column("mode", sa.String(24), nullable=False),
        sa.Column("threshold_error_count", sa.Integer, nullable=False),
        sa.Column("threshold_minutes", sa.Integer, nullable=False),
        sa.Column("number_of_reminders", sa.Integer, nullable=False),
        sa.Column("reminder_delay", sa.Integer, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.create_table(
        "alert_definition_monitor",
        _definition(),
        _reference("monitor_guid", "monitor"),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_alert_definition_monitor_monitor", "alert_definition_monitor", ["monitor_guid"]
    )
    op.create_table(
        "alert_definition_monitor_group",
        _definition(),
        _reference("group_guid", "monitor_group"),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_alert_definition_monitor_group_group",
        "alert_definition_monitor_group",
        ["group_guid"],
    )
    op.create_table(
        "escalation_level_operator",
        _definition(),
        sa.Column("level", sa.SmallInteger, primary_key=True),
        _reference("operator_guid", "operator"),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_escalation_level_operator_operator", "escalation_level_operator", ["operator_guid"]
    )
    op.create_table(
        "escalation_level_operator_group",
        _definition(),
        sa.Column("level", sa.SmallInteger, primary_key=True),
        _reference("group_guid", "operator_group"),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_escalation_level_operator_group_group",
        "escalation_level_operator_group",
        ["group_guid"],
    )
    op.create_table(
        "escalation_level_integration",
        _definition(),
        sa.Column("level", sa.SmallInteger, primary_key=True),
        _reference("integration_guid", "integration"),
        sa.Column("is_active", sa.Boolean, nullable=False),
        sa.Column("send_ok_alerts", sa.Boolean, nullable=False),
        sa.Column("send_reminder_alerts", sa.Boolean, nullable=False),
        sa.Column("variable_values", sa.Text, nullable=False),
        sa.Column("extra_email_addresses", sa.Text, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_escalation_level_integration_integration",
        "escalation_level_integration",
        ["integration_guid"],
    )
    revision_table = op.create_table(
        "alerting_revision",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(revision_table, [{"id": 1, "revision": 0}])


def downgrade() -> None:
    for table in (
        "alerting_revision",
        "escalation_level_integration",
        "escalation_level_operator_group",
        "escalation_level_operator",
        "alert_definition_monitor_group",
        "alert_definition_monitor",
        "escalation_level",
        "alert_definition",
    ):
        op.drop_table(table)
