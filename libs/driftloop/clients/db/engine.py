from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def create_engine_for(url: str, pool_size: int = 5) -> sa.Engine:
    """An engine tuned for the backend: SQLite in WAL mode with a busy timeout, so that several service
    processes can share one embedded database file; PostgreSQL with a small pool. ``pool_size``: connections
    kept open (as many as the threads that use the engine at once)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        pool: dict[str, int] = {}
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            pool = {"pool_size": pool_size, "max_overflow": 10}
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, **pool)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return sa.create_engine(url, pool_size=pool_size, max_overflow=5, pool_pre_ping=True)


def session_factory(engine: sa.Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def migrate(url: str) -> None:
    """Bring the database schema to the newest Alembic revision (of every branch: "heads")."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if url.startswith("sqlite"):
        # Several processes may start at once on one embedded database: migrate one at a time.
        # (PostgreSQL takes an advisory lock inside the migration transaction instead: see migrations/env.py.)
        from filelock import FileLock

        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with FileLock(f"{path}.migrate.lock", timeout=120):
                command.upgrade(cfg, "heads")
            return
    command.upgrade(cfg, "heads")
