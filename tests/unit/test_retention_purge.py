"""Retention purges on SQLite (the embedded default): serving's prediction/feedback join, the monitor's
observations and feedback, processed-event ids; the rules are in ``tests/retention_support.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import retention_support as scenario
import sqlalchemy as sa

from driftloop.clients.db import create_engine_for, migrate
from driftloop.runtime.retention import ROWS_PURGED


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    return create_engine_for(url)


def test_serving_purge_keeps_recent_joined_and_pending_predictions(engine: sa.Engine) -> None:
    before = ROWS_PURGED.labels("serving_predictions")._value.get()
    scenario.check_serving(engine)
    assert ROWS_PURGED.labels("serving_predictions")._value.get() - before == 46


def test_monitor_purge_keeps_open_windows_baseline_numbering_and_pending_joins(engine: sa.Engine) -> None:
    scenario.check_monitor(engine)


def test_processed_events_purge_keeps_what_a_redelivery_could_need(engine: sa.Engine) -> None:
    scenario.check_processed_events(engine)


def test_db_purge_cli_runs_the_purges_with_the_settings(tmp_path: Path) -> None:
    import json
    from datetime import UTC, datetime, timedelta

    from typer.testing import CliRunner

    from driftloop.clients.db.models import ServedPrediction
    from driftloop.ops.cli import app as cli_app

    home = tmp_path / "home"
    (tmp_path / "no-pipelines").mkdir()
    home.mkdir()
    url = f"sqlite:///{(home / 'driftloop.db').resolve()}"
    migrate(url)
    now = datetime.now(tz=UTC)
    with create_engine_for(url).begin() as conn:
        for request_id, age in (("old", 10), ("new", 1)):
            conn.execute(
                sa.insert(ServedPrediction).values(
                    request_id=request_id, row_index=0, model="m", version=1, entity=None, prediction=0.1,
                    predicted_at=now - timedelta(days=age), replica="r",
                )
            )  # fmt: skip
    env = {
        "DRIFTLOOP_HOME": str(home),
        "DRIFTLOOP_PIPELINES_DIR": str(tmp_path / "no-pipelines"),
        "DRIFTLOOP_SERVING__PREDICTION_RETENTION_DAYS": "5",
        "DRIFTLOOP_SERVING__FEEDBACK_HORIZON_DAYS": "5",
    }
    result = CliRunner().invoke(cli_app, ["db", "purge"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["serving_predictions"] == 1
    with create_engine_for(url).connect() as conn:
        assert list(conn.execute(sa.select(ServedPrediction.request_id)).scalars()) == ["new"]
