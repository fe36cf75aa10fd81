"""The database side of prediction logging, written in batches: ``PredictionRecorder`` stores every queued row once
(a backlog past its bound is counted, not kept) and the event log stores each event once, with non-finite numbers
as null."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from driftloop.clients.db import Base, create_engine_for
from driftloop.clients.db.models import EventRecord, ServedPrediction
from driftloop.contracts.events import new_events
from driftloop.contracts.payloads import PredictionLogged, TrainingCompleted
from driftloop.runtime.bus import EventLog
from driftloop.services.serving import feedback
from driftloop.services.serving.feedback import RECORD_FAILURES, PredictionRecorder


def engine_at(tmp_path: Path) -> sa.Engine:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'log.db'}")
    Base.metadata.create_all(engine)
    return engine


def answered(request_id: str, rows: int) -> dict:
    return {
        "request_id": request_id,
        "model": "m",
        "version": 2,
        "predictions": [i / 10 for i in range(rows)],
        "entities": [f"e{i}" if i % 2 else None for i in range(rows)],
    }


def test_the_recorder_stores_every_queued_row_once(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(feedback, "MAX_BATCH_ROWS", 7)  # several executemany batches
    engine = engine_at(tmp_path)
    recorder = PredictionRecorder(engine, "replica-1")
    recorder.record(answered("a", 10))
    recorder.record(answered("b", 5))
    assert recorder.flush() == 15 and recorder.flush() == 0
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ServedPrediction).order_by(ServedPrediction.request_id, "row_index")).all()
    assert [(r.request_id, r.row_index) for r in rows] == [("a", i) for i in range(10)] + [("b", i) for i in range(5)]
    assert rows[3].entity == "e3" and rows[4].entity is None and rows[3].prediction == 0.3
    assert {r.replica for r in rows} == {"replica-1"} and {r.version for r in rows} == {2}


def test_a_recorder_backlog_past_its_bound_is_counted(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(feedback, "MAX_BACKLOG_ROWS", 12)
    recorder = PredictionRecorder(engine_at(tmp_path), "replica-1")
    before = RECORD_FAILURES.labels("backlog_full")._value.get()
    recorder.record(answered("a", 10))
    recorder.record(answered("b", 5))  # would pass the bound: counted
    assert RECORD_FAILURES.labels("backlog_full")._value.get() == before + 5
    assert recorder.flush() == 10


def test_the_event_log_stores_each_event_once_with_non_finite_numbers_as_null(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    log = EventLog(engine)
    rows = new_events(
        [
            PredictionLogged(
                request_id="r", model="m", version=1, index=i, inputs={"x": 1.5, "s": "a"}, prediction=0.25
            )
            for i in range(3)
        ],
        producer="serving",
    )
    trained = new_events(
        [
            TrainingCompleted(
                run_id="run",
                request_id="req",
                model="m",
                trigger="drift",
                dataset_version_id="d@v1",
                feature_set_uri="file:///f",
                artifact_uri="file:///a",
                artifact_sha256="0" * 64,
                metrics={"auc": math.nan, "loss": 0.5},
                params_json="{}",
                holdout_json="{}",
                feature_names=["x"],
            )
        ],
        producer="training",
    )
    log.write([*rows, *trained])
    log.write(rows[:2])  # again (a redelivered copy): not stored twice
    with engine.connect() as conn:
        stored = {r.event_id: r for r in conn.execute(sa.select(EventRecord))}
    assert set(stored) == {e.id for e in [*rows, *trained]}
    assert stored[rows[1].id].payload["inputs"] == {"x": 1.5, "s": "a"} and stored[rows[1].id].payload["index"] == 1
    assert stored[trained[0].id].payload["metrics"] == {"auc": None, "loss": 0.5}


def test_the_recorder_keeps_each_rows_inputs_with_non_finite_numbers_as_null(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    recorder = PredictionRecorder(engine, "replica-1")
    inputs = [{"x": 1.5, "s": "a"}, {"x": math.inf, "s": None}]
    recorder.record({**answered("a", 2), "inputs": inputs})
    recorder.record(answered("b", 1))  # a caller without inputs: none stored
    assert recorder.flush() == 3
    with engine.connect() as conn:
        stored = {(r.request_id, r.row_index): r.inputs for r in conn.execute(sa.select(ServedPrediction))}
    assert stored == {("a", 0): {"x": 1.5, "s": "a"}, ("a", 1): {"x": None, "s": None}, ("b", 0): None}


def test_rows_are_made_for_the_dialects_parameter_style() -> None:
    """SQLite takes the rows as tuples in the statement's order, with the time as its column type binds it;
    PostgreSQL (psycopg: named parameters) as dicts. Inputs are JSON text, non-finite numbers as null."""
    when = datetime(2026, 12, 3, 18, 40, 1, 250000, tzinfo=UTC)
    answered_row = {**answered("a", 2), "answered_at": when, "inputs": [{"x": math.nan}, {"s": "é"}]}
    sqlite_rows = feedback._RowInsert(sa.create_engine("sqlite://")).rows(answered_row, "r1")
    assert sqlite_rows[1] == ("a", 1, "m", 2, "e1", 0.1, "2026-12-03 18:40:01.250000", "r1", '{"s":"é"}')
    postgres = sa.create_engine("postgresql+psycopg://u@127.0.0.1:1/db")  # not connected: compiling only
    named = feedback._RowInsert(postgres)
    assert "%(request_id)s" in named.sql
    assert named.rows(answered_row, "r1")[0] == {
        "request_id": "a",
        "row_index": 0,
        "model": "m",
        "version": 2,
        "entity": None,
        "prediction": 0.0,
        "predicted_at": when,
        "replica": "r1",
        "inputs": '{"x":null}',
    }


def test_a_malformed_result_is_counted_and_the_others_are_stored(tmp_path: Path) -> None:
    recorder = PredictionRecorder(engine_at(tmp_path), "replica-1")
    before = RECORD_FAILURES.labels("malformed")._value.get()
    recorder.record({**answered("bad", 3), "entities": [None]})  # fewer entities than rows
    recorder.record(answered("good", 2))
    assert recorder.flush() == 2
    assert RECORD_FAILURES.labels("malformed")._value.get() == before + 3
