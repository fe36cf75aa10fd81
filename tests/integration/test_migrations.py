"""The Alembic migrations build exactly the tables the models declare, on SQLite and PostgreSQL: a model
change without a migration fails here (write one with `alembic revision --autogenerate`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from driftloop.clients.db import Base, create_engine_for, migrate

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    url: str = request.getfixturevalue("postgres_url")
    engine = create_engine_for(url)
    with engine.begin() as conn:  # a clean schema for this test
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS migtest CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA migtest")
    engine.dispose()
    return url + "?options=-csearch_path%3Dmigtest"


def test_migrations_match_the_models(database_url: str) -> None:
    migrate(database_url)
    migrate(database_url)  # idempotent: a second upgrade is a no-op
    engine = create_engine_for(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        # Several heads (one branch per area) until the lead merges them.
        assert MigrationContext.configure(conn).get_current_heads()
    engine.dispose()
    assert diff == [], f"models and migrations differ: {diff}"
