"""Retention purges on PostgreSQL (production): the same rules as on SQLite, on a database of its own (old rows
that nothing needs go; rows of open windows, the drift baseline, the numbering and pending joins stay)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import retention_support as scenario
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from driftloop.clients.db import create_engine_for, migrate


@pytest.fixture
def engine(postgres_url: str, unique: str) -> Iterator[sa.Engine]:
    name = f"retention_{unique}".replace("-", "_").lower()
    admin = create_engine_for(postgres_url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    migrate(url)
    engine = create_engine_for(url)
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}"'))
    admin.dispose()


def test_old_rows_go_and_needed_rows_stay_on_postgresql(engine: sa.Engine) -> None:
    scenario.check_serving(engine)
    scenario.check_monitor(engine)
    scenario.check_processed_events(engine)
