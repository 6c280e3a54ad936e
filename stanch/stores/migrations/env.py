"""Alembic's entry point: migrate over the connection `Records.upgrade()` hands in, inside its
transaction (so the upgrade and its lock commit or roll back together)."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `stanch db upgrade` (it connects to STANCH_DATABASE_URL), not the alembic command")

context.configure(connection=connection, target_metadata=None)
# The caller's transaction is already open: Alembic joins it instead of starting its own.
with context.begin_transaction():
    context.run_migrations()
