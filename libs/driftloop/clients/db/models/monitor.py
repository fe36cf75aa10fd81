"""Tables owned by the monitor service (others may read them, only it writes)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from driftloop.clients.db.models._base import Base, utcnow


class DriftReport(Base):
    __tablename__ = "drift_reports"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(sa.String(200), index=True)
    version: Mapped[int]
    window_index: Mapped[int] = mapped_column(sa.BigInteger)
    window_size: Mapped[int]
    drifted: Mapped[bool]
    tests: Mapped[list]
    event_id: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Window bounds: observation sequence numbers (count windows) or epoch seconds (time windows), end excluded.
    window_start: Mapped[float | None]
    window_end: Mapped[float | None]
    # The prediction-drift test of the window (against the champion's first window), and live data quality.
    prediction_test: Mapped[dict | None]
    quality: Mapped[dict | None]
    # Performance of the window's version: estimated from its predicted probabilities (CBPE) and the last measured.
    performance: Mapped[dict | None]
    __table_args__ = (sa.UniqueConstraint("model", "version", "window_index"),)


class MonitorObservation(Base):
    """One logged prediction of the watched champion: the durable input of the windows. ``seq`` numbers the
    predictions of (model, version) in arrival order; inserts are keyed by event id, so a redelivery after a
    crash is not counted twice and windows are rebuilt from these rows after a restart."""

    __tablename__ = "monitor_observations"
    event_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    model: Mapped[str] = mapped_column(sa.String(200))
    version: Mapped[int]
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    # Event time (epoch seconds) of the prediction: the clock of time windows.
    event_time: Mapped[float]
    request_id: Mapped[str] = mapped_column(sa.String(200), index=True)
    row_index: Mapped[int]
    features: Mapped[dict]
    inputs: Mapped[dict]
    prediction: Mapped[float]
    __table_args__ = (
        sa.UniqueConstraint("model", "version", "seq"),
        sa.Index("ix_monitor_observations_model_version_time", "model", "version", "event_time"),
    )


class MonitorFeedback(Base):
    """An actual outcome (FeedbackReceived), joined with its prediction by request id and row. ``seq`` numbers
    the joined pairs per model (performance windows); null until the prediction is known."""

    __tablename__ = "monitor_feedback"
    event_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    model: Mapped[str] = mapped_column(sa.String(200))
    request_id: Mapped[str] = mapped_column(sa.String(200), index=True)
    row_index: Mapped[int]
    actual: Mapped[float]
    version: Mapped[int | None]
    prediction: Mapped[float | None]
    seq: Mapped[int | None] = mapped_column(sa.BigInteger)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Numbers the joined pairs per (model, version): the performance windows of one version.
    version_seq: Mapped[int | None] = mapped_column(sa.BigInteger)
    __table_args__ = (
        sa.UniqueConstraint("model", "seq"),
        sa.UniqueConstraint("model", "version", "version_seq", name="uq_monitor_feedback_version_seq"),
    )


class PerformanceReport(Base):
    """Performance of one tumbling window of labeled predictions."""

    __tablename__ = "performance_reports"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(sa.String(200), index=True)
    window_index: Mapped[int] = mapped_column(sa.BigInteger)
    window_size: Mapped[int]
    # Versions whose predictions are in the window.
    versions: Mapped[list]
    metric: Mapped[str] = mapped_column(sa.String(32))
    value: Mapped[float | None]
    threshold: Mapped[float | None]
    degraded: Mapped[bool]
    # Every metric of the task computed on the window (e.g. accuracy, f1, roc_auc).
    metrics: Mapped[dict]
    event_id: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The one version whose labeled predictions the window holds, and the window's index among that version's.
    version: Mapped[int | None]
    version_window: Mapped[int | None] = mapped_column(sa.BigInteger)
    __table_args__ = (
        sa.UniqueConstraint("model", "window_index"),
        sa.UniqueConstraint("model", "version", "version_window", name="uq_performance_reports_version_window"),
    )


class MonitoredModel(Base):
    """The champion the monitor watches per model, so that a restart reloads its reference."""

    __tablename__ = "monitored_models"
    model: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    version: Mapped[int]
    dataset_version_id: Mapped[str] = mapped_column(sa.String(200))
    feature_set_uri: Mapped[str] = mapped_column(sa.String(500))
    event_id: Mapped[str] = mapped_column(sa.String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class MonitorVersion(Base):
    """Every version promoted to champion, with its artifact (the guard scores the previous champion on the new
    one's labeled traffic) and the champion it replaced."""

    __tablename__ = "monitor_versions"
    model: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True)
    artifact_uri: Mapped[str] = mapped_column(sa.String(500))
    artifact_sha256: Mapped[str] = mapped_column(sa.String(64))
    dataset_version_id: Mapped[str] = mapped_column(sa.String(200))
    previous_version: Mapped[int | None]
    # A rollback promotion is not guarded (it returns to a version that served before).
    rollback: Mapped[bool] = mapped_column(default=False)
    event_id: Mapped[str] = mapped_column(sa.String(64))
    promoted_at: Mapped[datetime] = mapped_column(default=utcnow)
