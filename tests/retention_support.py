"""Retention purge scenario shared by the SQLite unit tests and the PostgreSQL integration test: old rows that
nothing needs go, rows an open window, the drift baseline, the numbering or a pending feedback join needs stay."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from model_factory import make_pipeline

from driftloop.clients.db.models import (
    DriftReport,
    MonitorFeedback,
    MonitorObservation,
    PerformanceReport,
    PredictionFeedback,
    ProcessedEvent,
    ServedPrediction,
)
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.runtime.bus import purge_processed_events
from driftloop.services.monitor.retention import purge_observations
from driftloop.services.serving.retention import purge_predictions

NOW = datetime(2026, 6, 1, tzinfo=UTC)
RETENTION_DAYS, HORIZON_DAYS = 30.0, 45.0
MODEL, OTHER = "fraud-retention", "not-configured"
# Small batches: the purge must loop over several transactions.
BATCH = 7


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def pipeline() -> PipelineConfig:
    return make_pipeline(model=MODEL, stream="tx-retention")


def seed_serving(engine: sa.Engine) -> None:
    """Predictions named by what should happen to them: ``gone-*`` go, ``kept-*`` stay."""
    predictions = {
        "gone-joined-long-ago": (100, 90),  # (prediction age, feedback age or None), in days
        "kept-feedback-recent": (100, 5),
        "gone-unjoined-past-horizon": (50, None),
        "kept-unjoined-within-horizon": (40, None),
        "kept-recent": (1, None),
    }
    with engine.begin() as conn:
        for request_id, (age, feedback_age) in predictions.items():
            for row_index in range(3):
                conn.execute(
                    sa.insert(ServedPrediction).values(
                        request_id=request_id,
                        row_index=row_index,
                        model=MODEL,
                        version=1,
                        entity=f"c{row_index}",
                        prediction=0.5,
                        predicted_at=ago(age),
                        replica="r1",
                    )
                )
                if feedback_age is not None:
                    conn.execute(
                        sa.insert(PredictionFeedback).values(
                            event_id=uuid.uuid4().hex,
                            model=MODEL,
                            request_id=request_id,
                            row_index=row_index,
                            actual=1.0,
                            received_at=ago(feedback_age),
                        )
                    )
        # Many old unjoined rows: several purge batches.
        conn.execute(
            sa.insert(ServedPrediction),
            [
                {
                    "request_id": f"gone-bulk-{i}",
                    "row_index": 0,
                    "model": MODEL,
                    "version": 1,
                    "entity": None,
                    "prediction": 0.1,
                    "predicted_at": ago(60),
                    "replica": "r1",
                }
                for i in range(40)
            ],
        )


def serving_left(engine: sa.Engine) -> tuple[set[str], set[str]]:
    with engine.connect() as conn:
        predictions = set(conn.execute(sa.select(ServedPrediction.request_id).distinct()).scalars())
        feedback = set(conn.execute(sa.select(PredictionFeedback.request_id).distinct()).scalars())
    return predictions, feedback


def check_serving(engine: sa.Engine) -> None:
    seed_serving(engine)
    purged = purge_predictions(
        engine, retention_days=RETENTION_DAYS, feedback_horizon_days=HORIZON_DAYS, batch_rows=BATCH, now=NOW
    )
    predictions, feedback = serving_left(engine)
    assert predictions == {"kept-feedback-recent", "kept-unjoined-within-horizon", "kept-recent"}
    assert feedback == {"kept-feedback-recent"}
    assert purged == {"serving_predictions": 3 + 3 + 40, "serving_feedback": 3}
    # Again: nothing more to do. With retention 0 nothing ever goes.
    assert purge_predictions(
        engine, retention_days=RETENTION_DAYS, feedback_horizon_days=HORIZON_DAYS, batch_rows=BATCH, now=NOW
    ) == {"serving_predictions": 0, "serving_feedback": 0}
    assert purge_predictions(
        engine, retention_days=0, feedback_horizon_days=0, batch_rows=BATCH, now=NOW + timedelta(days=999)
    ) == {"serving_predictions": 0, "serving_feedback": 0}


def observation(model: str, version: int, seq: int, age_days: float, request_id: str) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "model": model,
        "version": version,
        "seq": seq,
        "event_time": ago(age_days).timestamp(),
        "request_id": request_id,
        "row_index": 0,
        "features": {},
        "inputs": {},
        "prediction": 0.5,
    }


def report(model: str, version: int, window_index: int, size: int) -> dict[str, Any]:
    return {
        "model": model,
        "version": version,
        "window_index": window_index,
        "window_size": size,
        "drifted": False,
        "tests": [],
        "window_start": float(window_index * size),
        "window_end": float((window_index + 1) * size),
        "created_at": NOW,
    }


def seed_monitor(engine: sa.Engine, size: int) -> None:
    """Version 1 of MODEL: windows 0 (the baseline) and 1 reported, window 2 open; every row old except where
    said. In window 1: seq W..W+9 recent (kept), W+10..W+19 within the horizon without feedback (kept),
    W+20..W+29 within the horizon with joined feedback (gone), the rest past the horizon (gone). Version 2 (no
    report yet) and a model without pipeline config: kept whole."""
    rows = []
    for seq in range(3 * size):
        offset = seq - size
        age = 1 if 0 <= offset < 10 else 40 if 10 <= offset < 30 else 100
        rows.append(observation(MODEL, 1, seq, age, f"req-{seq}"))
    rows += [observation(MODEL, 2, seq, 100, f"v2-{seq}") for seq in range(size)]
    rows += [observation(OTHER, 1, seq, 100, f"other-{seq}") for seq in range(size)]
    with engine.begin() as conn:
        conn.execute(sa.insert(MonitorObservation), rows)
        conn.execute(sa.insert(DriftReport), [report(MODEL, 1, 0, size), report(MODEL, 1, 1, size)])
        conn.execute(sa.insert(DriftReport), [report(OTHER, 1, 0, size), report(OTHER, 1, 1, size)])
        # Feedback joined to W+20..W+29 (seq 0..9 of the joined pairs), received long ago; one never joined
        # past the horizon (gone), one never joined within it (kept).
        feedback = [
            {
                "event_id": f"fb-{i}",
                "model": MODEL,
                "request_id": f"req-{size + 20 + i}",
                "row_index": 0,
                "actual": 1.0,
                "version": 1,
                "prediction": 0.5,
                "seq": i,
                "received_at": ago(100),
            }
            for i in range(10)
        ]
        feedback += [
            {"event_id": "fb-lost", "model": MODEL, "request_id": "nowhere", "row_index": 0, "actual": 0.0,
             "version": None, "prediction": None, "seq": None, "received_at": ago(50)},
            {"event_id": "fb-waiting", "model": MODEL, "request_id": "later", "row_index": 0, "actual": 0.0,
             "version": None, "prediction": None, "seq": None, "received_at": ago(40)},
        ]  # fmt: skip
        conn.execute(sa.insert(MonitorFeedback), feedback)
    return None


def check_monitor(engine: sa.Engine) -> None:
    spec = pipeline()
    size = spec.monitor.window_size
    seed_monitor(engine, size)
    purged = purge_observations(
        engine,
        {MODEL: spec},
        retention_days=RETENTION_DAYS,
        feedback_horizon_days=HORIZON_DAYS,
        batch_rows=BATCH * 10,
        now=NOW,
    )
    with engine.connect() as conn:
        left = set(
            conn.execute(
                sa.select(MonitorObservation.seq).where(
                    MonitorObservation.model == MODEL, MonitorObservation.version == 1
                )
            ).scalars()
        )
        v2 = conn.scalar(
            sa.select(sa.func.count()).where(MonitorObservation.model == MODEL, MonitorObservation.version == 2)
        )
        other = conn.scalar(sa.select(sa.func.count()).where(MonitorObservation.model == OTHER))
        feedback = set(conn.execute(sa.select(MonitorFeedback.event_id)).scalars())
    baseline, open_window = set(range(size)), set(range(2 * size, 3 * size))
    kept_in_closed = set(range(size, size + 20))  # recent, and within the horizon without feedback
    assert left == baseline | kept_in_closed | open_window
    assert v2 == size and other == size
    # No performance window reported yet: joined feedback stays; the never-joined past the horizon goes.
    assert feedback == {f"fb-{i}" for i in range(10)} | {"fb-waiting"}
    assert purged == {"monitor_observations": size - 20, "monitor_feedback": 1}

    # Once the first performance window (of the model's window_size joined pairs) is reported, its rows may go,
    # except the newest joined row (the numbering goes on from it).
    with engine.begin() as conn:
        conn.execute(
            sa.insert(PerformanceReport).values(
                model=MODEL, window_index=0, window_size=10, versions=[1], metric="roc_auc", value=None,
                threshold=None, degraded=False, metrics={}, created_at=NOW,
            )
        )  # fmt: skip
    purge_observations(
        engine, {MODEL: spec}, retention_days=RETENTION_DAYS, feedback_horizon_days=HORIZON_DAYS, batch_rows=3, now=NOW
    )
    with engine.connect() as conn:
        feedback = set(conn.execute(sa.select(MonitorFeedback.event_id)).scalars())
    assert feedback == {"fb-9", "fb-waiting"}


def check_processed_events(engine: sa.Engine) -> None:
    """Group a: active (newest row now): old rows go. Group b: stopped 90 days ago: its last hour stays (its
    last events may be uncommitted, redelivered when it starts again), older rows go."""
    rows = [("a", f"a-old-{i}", ago(60)) for i in range(20)] + [("a", "a-new", ago(0))]
    rows += [("b", f"b-old-{i}", ago(100)) for i in range(5)] + [
        ("b", "b-last", ago(90)),
        ("b", "b-near", ago(90) - timedelta(minutes=10)),
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(ProcessedEvent), [{"consumer": c, "event_id": e, "processed_at": t} for c, e, t in rows])
    deleted = purge_processed_events(engine, retention_days=RETENTION_DAYS, batch_rows=BATCH, consumers=["a"], now=NOW)
    assert deleted == 20
    deleted = purge_processed_events(engine, retention_days=RETENTION_DAYS, batch_rows=BATCH, now=NOW)
    assert deleted == 5
    with engine.connect() as conn:
        left = set(conn.execute(sa.select(ProcessedEvent.event_id)).scalars())
    assert left == {"a-new", "b-last", "b-near"}
    assert purge_processed_events(engine, retention_days=0, batch_rows=BATCH, now=NOW + timedelta(days=999)) == 0
