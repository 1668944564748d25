"""Alembic environment: runs on the connection controller.db.migrate hands it."""

from __future__ import annotations

from alembic import context

from controller.db.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through controller.db.migrate (it passes a connection)")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
