"""Tables owned by the serving service (others may read them, only it writes)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from driftloop.clients.db.models._base import Base, utcnow


class ServedPrediction(Base):
    """One answered row, written off the hot path by the replica that answered it; the left side of the
    prediction/feedback join."""

    __tablename__ = "serving_predictions"
    request_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    row_index: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(sa.String(200))
    version: Mapped[int]
    entity: Mapped[str | None] = mapped_column(sa.String(200))
    prediction: Mapped[float]
    predicted_at: Mapped[datetime]
    replica: Mapped[str] = mapped_column(sa.String(200))
    # The row's inputs as logged (the pipeline's stream fields it carried); None for rows recorded before 0012.
    inputs: Mapped[dict | None] = mapped_column(sa.JSON, nullable=True)
    __table_args__ = (
        sa.Index("ix_serving_predictions_model_entity_time", "model", "entity", "predicted_at"),
        sa.Index("ix_serving_predictions_predicted_at", "predicted_at"),  # the retention purge
    )


class PredictionFeedback(Base):
    """An actual outcome posted to ``/v1/models/{name}/feedback``, keyed by the FeedbackReceived event it sent;
    joined with ``serving_predictions`` on (request_id, row_index)."""

    __tablename__ = "serving_feedback"
    event_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    model: Mapped[str] = mapped_column(sa.String(200), index=True)
    request_id: Mapped[str] = mapped_column(sa.String(64))
    row_index: Mapped[int]
    actual: Mapped[float]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (
        sa.Index("ix_serving_feedback_request_row", "request_id", "row_index"),
        sa.Index("ix_serving_feedback_received_at", "received_at"),  # the retention purge
    )
