"""Retention purges on PostgreSQL (production): the same rules as on SQLite, on a database of its own (old rows
that nothing needs go; rows of open windows, the drift baseline, the numbering and pending joins stay)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import retention_support as scenario
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from driftloop.clients.db import create_engine_for, migrate
from driftloop.clients.db.models import ServedPrediction
from driftloop.services.serving.feedback import PredictionRecorder


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


def test_the_prediction_recorder_writes_its_rows_on_postgresql(engine: sa.Engine) -> None:
    """Serving's rows go by one executemany of plain parameters (``PredictionRecorder``): on PostgreSQL too, with
    the inputs' JSON (non-finite numbers as null) and the answer's time read back as written."""
    when = datetime(2026, 12, 3, 18, 40, 1, 250000, tzinfo=UTC)
    recorder = PredictionRecorder(engine, "replica-pg")
    recorder.record(
        {
            "request_id": "pg-1",
            "model": "m",
            "version": 3,
            "predictions": [0.25, 0.75],
            "entities": ["e0", None],
            "inputs": [{"x": 1.5, "s": "é"}, {"x": math.inf, "flag": True}],
            "answered_at": when,
        }
    )
    assert recorder.flush() == 2
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ServedPrediction).order_by(ServedPrediction.row_index)).all()
    assert [(r.request_id, r.row_index, r.entity, r.prediction, r.replica) for r in rows] == [
        ("pg-1", 0, "e0", 0.25, "replica-pg"),
        ("pg-1", 1, None, 0.75, "replica-pg"),
    ]
    assert rows[0].inputs == {"x": 1.5, "s": "é"} and rows[1].inputs == {"x": None, "flag": True}
    assert rows[0].predicted_at.replace(tzinfo=UTC) == when
