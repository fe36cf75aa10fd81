"""Retention of serving's prediction/feedback join (``serving_predictions``, ``serving_feedback``).

Rule: a prediction goes once it is older than ``serving.prediction_retention_days`` AND no feedback joined to it
is younger than that AND (it has feedback OR it is older than ``serving.feedback_horizon_days``: feedback may
still come until then). Feedback goes once it is older than the retention and its prediction is gone."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from driftloop.clients.db.models import PredictionFeedback, ServedPrediction
from driftloop.contracts.settings import Settings
from driftloop.runtime.retention import cutoff, purge_in_batches, utcnow


def _feedback_of_prediction() -> sa.ColumnElement[bool]:
    return sa.and_(
        PredictionFeedback.request_id == ServedPrediction.request_id,
        PredictionFeedback.row_index == ServedPrediction.row_index,
    )


def purge_predictions(
    engine: sa.Engine,
    *,
    retention_days: float,
    feedback_horizon_days: float,
    batch_rows: int,
    now: datetime | None = None,
) -> dict[str, int]:
    """Delete what the rule above allows; returns rows deleted per table."""
    now = now or utcnow()
    old = cutoff(now, retention_days)
    if old is None:
        return {"serving_predictions": 0, "serving_feedback": 0}
    unjoined_old = cutoff(now, feedback_horizon_days) or now
    joined = sa.exists().where(_feedback_of_prediction())
    recent_feedback = sa.exists().where(_feedback_of_prediction(), PredictionFeedback.received_at >= old)
    expired = sa.and_(
        ServedPrediction.predicted_at < old,
        ~recent_feedback,
        sa.or_(joined, ServedPrediction.predicted_at < unjoined_old),
    )
    predictions = purge_in_batches(
        engine,
        "serving_predictions",
        ServedPrediction.request_id,
        expired,
        batch_rows,
    )
    orphan = sa.and_(
        PredictionFeedback.received_at < old,
        ~sa.exists().where(_feedback_of_prediction()),
    )
    feedback = purge_in_batches(
        engine,
        "serving_feedback",
        PredictionFeedback.event_id,
        orphan,
        batch_rows,
    )
    return {"serving_predictions": predictions, "serving_feedback": feedback}


def purge(engine: sa.Engine, settings: Settings, now: datetime | None = None) -> dict[str, int]:
    return purge_predictions(
        engine,
        retention_days=settings.serving.prediction_retention_days,
        feedback_horizon_days=settings.serving.feedback_horizon_days,
        batch_rows=settings.database.purge_batch_rows,
        now=now,
    )
