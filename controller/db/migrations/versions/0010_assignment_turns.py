"""The turn published with each assignment, so that a restarted controller does not publish
every assignment again to learn it.

Revision ID: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for the rows already there: their turns are published once more, then stored
    op.add_column("assignment", sa.Column("rotation_position", sa.Integer, nullable=True))
    op.add_column("assignment", sa.Column("rotation_count", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("assignment") as batch:
        batch.drop_column("rotation_count")
        batch.drop_column("rotation_position")
