"""Alembic environment: the metadata is driftloop.clients.db.models; the URL comes from the caller's config."""

from __future__ import annotations

from alembic import context

from driftloop.clients.db.engine import create_engine_for
from driftloop.clients.db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine_for(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Serialize concurrent upgrades (several services starting at once); released at commit.
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7241100)")
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
