"""The fleet: a server's state (pending, upcoming, active, retired) and when an upcoming one
starts taking checks; primary checkpoints; one-time enrolment tokens and the agents they
enrolled (with the agent's public key).

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("server") as batch:
        # servers registered before states existed were taking checks: they stay active
        batch.add_column(sa.Column("state", sa.String(16), nullable=False, server_default="active"))
        batch.add_column(sa.Column("activate_after_us", sa.BigInteger, nullable=True))
    with op.batch_alter_table("checkpoint") as batch:
        batch.add_column(
            sa.Column("is_primary", sa.Boolean, nullable=False, server_default=sa.true())
        )
    op.create_table(
        "enrolment",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("checkpoint_name", sa.String(100), nullable=False),
        sa.Column("region_name", sa.String(100), nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("expires_us", sa.BigInteger, nullable=False),
        sa.Column("used_us", sa.BigInteger, nullable=True),
        sa.Column("agent_id", sa.String(64), nullable=True, unique=True),
        sa.Column("public_key", sa.Text, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("enrolment")
    with op.batch_alter_table("checkpoint") as batch:
        batch.drop_column("is_primary")
    with op.batch_alter_table("server") as batch:
        batch.drop_column("activate_after_us")
        batch.drop_column("state")
