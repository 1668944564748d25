"""Operators as Uptrends has them: contact fields, duty, time zone; operator groups with the
built-in Everyone and Administrators; off-duty schedules. Existing operators keep their
login; those with is_admin become members of Administrators; a user name that is an email
address becomes the Email.

Revision ID: 0007
"""

from __future__ import annotations

import time
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("operator", sa.Column("email", sa.String(254), nullable=True))
    op.add_column("operator", sa.Column("email_key", sa.String(254), nullable=True))
    op.add_column("operator", sa.Column("backup_email", sa.String(254), nullable=True))
    op.add_column("operator", sa.Column("mobile_phone", sa.String(50), nullable=True))
    op.add_column(
        "operator",
        sa.Column("is_on_duty", sa.Boolean, nullable=False, server_default=sa.true()),
    )
    op.add_column("operator", sa.Column("time_zone_id", sa.Integer, nullable=True))
    op.add_column("operator", sa.Column("allow_native_login", sa.Boolean, nullable=True))
    op.add_column("operator", sa.Column("settings", sa.Text, nullable=False, server_default="{}"))
    op.add_column("operator", sa.Column("modified_us", sa.BigInteger, nullable=True))
    op.create_index("ux_operator_email_key", "operator", ["email_key"], unique=True)
    groups = op.create_table(
        "operator_group",
        sa.Column("guid", sa.String(36), primary_key=True),
        sa.Column("description", sa.String(200), nullable=False),
        sa.Column("is_everyone", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("is_administrators", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    members = op.create_table(
        "operator_group_member",
        sa.Column(
            "group_guid",
            sa.String(36),
            sa.ForeignKey("operator_group.guid", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "operator_guid",
            sa.String(36),
            sa.ForeignKey("operator.guid", ondelete="CASCADE"),
            primary_key=True,
        ),
    )
    op.create_index("ix_operator_group_member_operator", "operator_group_member", ["operator_guid"])
    op.create_table(
        "duty_schedule",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "operator_guid",
            sa.String(36),
            sa.ForeignKey("operator.guid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("start_local", sa.String(19), nullable=True),
        sa.Column("end_local", sa.String(19), nullable=True),
        sa.Column("week_day", sa.SmallInteger, nullable=True),
        sa.Column("month_day", sa.SmallInteger, nullable=True),
        sa.Column("start_time", sa.String(5), nullable=True),
        sa.Column("end_time", sa.String(5), nullable=True),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_duty_schedule_operator", "duty_schedule", ["operator_guid"])

    # the built-in groups, and the existing operators in them
    now = time.time_ns() // 1000
    admins_guid = str(uuid.uuid4())
    op.bulk_insert(
        groups,
        [
            {
                "guid": str(uuid.uuid4()),
                "description": "Everyone",
                "is_everyone": True,
                "is_administrators": False,
                "created_us": now,
            },
            {
                "guid": admins_guid,
                "description": "Administrators",
                "is_everyone": False,
                "is_administrators": True,
                "created_us": now,
            },
        ],
    )
    conn = op.get_bind()
    operator = sa.table(
        "operator",
        sa.column("guid", sa.String),
        sa.column("username", sa.String),
        sa.column("is_admin", sa.Boolean),
        sa.column("email", sa.String),
        sa.column("email_key", sa.String),
    )
    rows = conn.execute(sa.select(operator.c.guid, operator.c.username, operator.c.is_admin))
    seen: set[str] = set()
    admins = []
    for guid, username, is_admin in list(rows):
        if is_admin:
            admins.append({"group_guid": admins_guid, "operator_guid": guid})
        key = username.lower()
        if "@" in username and len(username) <= 254 and key not in seen:
            seen.add(key)
            conn.execute(
                sa.update(operator)
                .where(operator.c.guid == guid)
                .values(email=username, email_key=key)
            )
    if admins:
        op.bulk_insert(members, admins)


def downgrade() -> None:
    # administrators are flagged again before their group goes
    op.execute(
        "UPDATE operator SET is_admin = EXISTS (SELECT 1 FROM operator_group_member m "
        "JOIN operator_group g ON g.guid = m.group_guid "
        "WHERE g.is_administrators AND m.operator_guid = operator.guid)"
    )
    op.drop_table("duty_schedule")
    op.drop_table("operator_group_member")
    op.drop_table("operator_group")
    op.drop_index("ux_operator_email_key", "operator")
    # plain ALTER TABLE DROP COLUMN (SQLite 3.35+): a batch copy of the table would
    # cascade-delete the API accounts that reference it
    for name in (
        "modified_us",
        "settings",
        "allow_native_login",
        "time_zone_id",
        "is_on_duty",
        "mobile_phone",
        "backup_email",
        "email_key",
        "email",
    ):
        op.drop_column("operator", name)
