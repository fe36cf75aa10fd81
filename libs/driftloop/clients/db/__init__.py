"""Database access: one SQLAlchemy metadata (migrated by Alembic), engines for SQLite and PostgreSQL."""

from driftloop.clients.db.engine import create_engine_for, migrate, session_factory
from driftloop.clients.db.models import Base

__all__ = ["Base", "create_engine_for", "migrate", "session_factory"]
