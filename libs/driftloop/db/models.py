"""All tables, grouped by the service that owns (writes) them. A service reads only its own tables and the
shared event log; everything else it learns from events or another service's HTTP API."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(tz=UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: sa.DateTime(timezone=True), dict: sa.JSON, list: sa.JSON}


# --- shared: the event log (written by every producer through driftloop.bus) -------------------------------


class EventRecord(Base):
    __tablename__ = "events"
    event_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    event_type: Mapped[str] = mapped_column(sa.String(64), index=True)
    topic: Mapped[str] = mapped_column(sa.String(200))
    cascade_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    caused_by: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    producer: Mapped[str] = mapped_column(sa.String(64))
    occurred_at: Mapped[datetime]
    model: Mapped[str | None] = mapped_column(sa.String(200), index=True)
    stream: Mapped[str | None] = mapped_column(sa.String(200), index=True)
    payload: Mapped[dict] = mapped_column(sa.JSON)


class ProcessedEvent(Base):
    """Consumer-side idempotency: an event is handled once per consumer group, even when redelivered."""

    __tablename__ = "processed_events"
    consumer: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    event_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The retention purge selects a group's old ids (driftloop.bus.purge_processed_events).
    __table_args__ = (sa.Index("ix_processed_events_consumer_processed_at", "consumer", "processed_at"),)


# --- schemaregistry ------------------------------------------------------------------------------------------


class RegistrySchema(Base):
    __tablename__ = "sr_schemas"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    schema_type: Mapped[str] = mapped_column(sa.String(32), default="AVRO")
    fingerprint: Mapped[str] = mapped_column(sa.String(64), unique=True)
    schema_text: Mapped[str] = mapped_column(sa.Text)


class RegistrySubjectVersion(Base):
    __tablename__ = "sr_subject_versions"
    subject: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True)
    schema_id: Mapped[int] = mapped_column(sa.ForeignKey("sr_schemas.id"))
    deleted: Mapped[bool] = mapped_column(default=False)


class RegistryConfig(Base):
    """Compatibility level per subject; the empty subject holds the global level."""

    __tablename__ = "sr_config"
    subject: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    compatibility: Mapped[str] = mapped_column(sa.String(32))


# --- ingestion -----------------------------------------------------------------------------------------------


class LandedBatch(Base):
    __tablename__ = "landed_batches"
    object_key: Mapped[str] = mapped_column(sa.String(500), primary_key=True)
    stream: Mapped[str] = mapped_column(sa.String(200), index=True)
    source: Mapped[str] = mapped_column(sa.String(500))
    rows: Mapped[int]
    min_event_time: Mapped[datetime | None]
    max_event_time: Mapped[datetime | None]
    landed_at: Mapped[datetime] = mapped_column(default=utcnow)
    dataset_version_id: Mapped[str | None] = mapped_column(sa.String(200), index=True)
    # Kafka batches: the source offsets, so that a replay after a crash skips what already landed.
    kafka_partition: Mapped[int | None]
    first_offset: Mapped[int | None] = mapped_column(sa.BigInteger)
    last_offset: Mapped[int | None] = mapped_column(sa.BigInteger)
    # Retention: the compacted object now holding these rows (the row stays, so replays still skip its offsets).
    compacted_into: Mapped[str | None] = mapped_column(sa.String(500))


class DeadLetter(Base):
    __tablename__ = "dead_letters"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    stream: Mapped[str] = mapped_column(sa.String(200), index=True)
    reason: Mapped[str] = mapped_column(sa.String(64))
    field: Mapped[str | None] = mapped_column(sa.String(200))
    message: Mapped[str] = mapped_column(sa.Text)
    source: Mapped[str] = mapped_column(sa.String(500), unique=True)
    event_id: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The record as received (Avro wire bytes or JSON), so that it can be replayed once fixed.
    original: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    schema_id: Mapped[int | None]
    # Set when a replay landed the record: the landed object it went into.
    replayed_into: Mapped[str | None] = mapped_column(sa.String(500))
    replayed_at: Mapped[datetime | None]


class IngestionIdempotencyKey(Base):
    """HTTP batches sent with an ``Idempotency-Key``: a retry gets the first answer back and lands nothing."""

    __tablename__ = "ingestion_idempotency_keys"
    stream: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    body_sha256: Mapped[str] = mapped_column(sa.String(64))
    response: Mapped[dict]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"
    id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)  # STREAM@vN
    stream: Mapped[str] = mapped_column(sa.String(200), index=True)
    version: Mapped[int]
    uri: Mapped[str] = mapped_column(sa.String(500))
    content_hash: Mapped[str] = mapped_column(sa.String(64))
    row_count: Mapped[int] = mapped_column(sa.BigInteger)
    new_rows: Mapped[int] = mapped_column(sa.BigInteger)
    parent_id: Mapped[str | None] = mapped_column(sa.String(200))
    mode: Mapped[str] = mapped_column(sa.String(32))
    schema_json: Mapped[dict]
    profile: Mapped[dict]
    min_event_time: Mapped[datetime | None]
    max_event_time: Mapped[datetime | None]
    event_id: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Dataset-level quality checks of the cut (uniqueness: duplicates dropped), see pipeline `dataset.unique_by`.
    checks: Mapped[dict | None]
    __table_args__ = (sa.UniqueConstraint("stream", "version"),)


# --- features ------------------------------------------------------------------------------------------------


class FeatureSet(Base):
    __tablename__ = "feature_sets"
    dataset_version_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    stream: Mapped[str] = mapped_column(sa.String(200), index=True)
    uri: Mapped[str] = mapped_column(sa.String(500))
    feature_names: Mapped[list]
    row_count: Mapped[int] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OnlineFeatures(Base):
    __tablename__ = "online_features"
    stream: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    entity: Mapped[str] = mapped_column(sa.String(500), primary_key=True)
    values: Mapped[dict]
    event_time: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class FeatureStreamEvent(Base):
    """Records the streaming-feature worker has applied, kept for the longest aggregate window: the durable state
    its running aggregates are recomputed from (faust Tables do not recover on every broker). Keyed by the
    record's source offset, so a redelivered record is applied once."""

    __tablename__ = "feature_stream_events"
    stream: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    # "topic/partition/offset"
    event_id: Mapped[str] = mapped_column(sa.String(300), primary_key=True)
    entity: Mapped[str] = mapped_column(sa.String(500))
    event_time: Mapped[datetime]
    fields: Mapped[dict]
    __table_args__ = (sa.Index("ix_feature_stream_events_entity", "stream", "entity", "event_time"),)


# --- triggers ------------------------------------------------------------------------------------------------


class TrainingRequest(Base):
    __tablename__ = "training_requests"
    request_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    model: Mapped[str] = mapped_column(sa.String(200), index=True)
    trigger: Mapped[str] = mapped_column(sa.String(32))
    reason: Mapped[str] = mapped_column(sa.Text)
    cause_event_id: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    cascade_id: Mapped[str | None] = mapped_column(sa.String(64))
    dataset_version_id: Mapped[str | None] = mapped_column(sa.String(200))
    # pending (waiting for fresh data) | requested | suppressed (cooldown/duplicate/active run)
    status: Mapped[str] = mapped_column(sa.String(32))
    note: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When a pending request fired, or a decision was last changed.
    updated_at: Mapped[datetime | None]
    # When the cause happened: a pending drift fires only on data materialized after it.
    cause_occurred_at: Mapped[datetime | None]
    # The TrainingRequested event sent for this decision, if any.
    event_id: Mapped[str | None] = mapped_column(sa.String(64))
    # What a pending request waits for: "data" (the next dataset version) or "run" (the active run to end).
    wait_for: Mapped[str | None] = mapped_column(sa.String(16))


class TriggerStreamState(Base):
    """The latest materialized dataset version of a stream, as the triggers service saw it."""

    __tablename__ = "trigger_stream_state"
    stream: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    dataset_version_id: Mapped[str] = mapped_column(sa.String(200))
    event_id: Mapped[str] = mapped_column(sa.String(64))
    materialized_at: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # New rows (DatasetVersionCreated.new_rows) landed since the last new-data request (triggers.new_data).
    rows_since_request: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")


class TriggerModelState(Base):
    """Per model: the champion, the active training runs and the last request (for cooldown)."""

    __tablename__ = "trigger_model_state"
    model: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    champion_version: Mapped[int | None]
    active_runs: Mapped[list] = mapped_column(default=list)
    last_request_at: Mapped[datetime | None]
    # Trigger kind -> ISO time of its last automatic request: the cooldown is per kind.
    last_request_by_kind: Mapped[dict] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Labels (FeedbackReceived) since the last labels decision (triggers.labels.every_n_labels).
    labels_since_request: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    # The last cron slot handled (triggers.schedule): a slot gives at most one request, even across restarts.
    last_schedule_slot: Mapped[datetime | None]


# --- training ------------------------------------------------------------------------------------------------


class Run(Base):
    __tablename__ = "runs"
    run_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    model: Mapped[str] = mapped_column(sa.String(200), index=True)
    state: Mapped[str] = mapped_column(sa.String(32), index=True)
    trigger: Mapped[str] = mapped_column(sa.String(32))
    cause_event_id: Mapped[str | None] = mapped_column(sa.String(64))
    cascade_id: Mapped[str | None] = mapped_column(sa.String(64))
    dataset_version_id: Mapped[str | None] = mapped_column(sa.String(200))
    params: Mapped[dict] = mapped_column(default=dict)
    metrics: Mapped[dict] = mapped_column(default=dict)
    artifact_uri: Mapped[str | None] = mapped_column(sa.String(500))
    artifact_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    code_version: Mapped[str | None] = mapped_column(sa.String(100))
    environment: Mapped[dict] = mapped_column(default=dict)
    resources: Mapped[dict] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(sa.Text)
    log_uri: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    # The feature set read and how its holdout was drawn (fraction, seed, rows): fixed per dataset version.
    feature_set_uri: Mapped[str | None] = mapped_column(sa.String(500))
    holdout: Mapped[dict] = mapped_column(default=dict)
    # Hyperparameter search: one entry per trial (config, status, scores per round "steps", early_stopped), and
    # the search's summary (searcher, metric, best trial and configuration, counts, seconds). Null: no search.
    trials: Mapped[list | None] = mapped_column(default=list)
    search: Mapped[dict | None] = mapped_column(default=dict)
    # name -> {uri, sha256, bytes}: model, feature list, training-set reference, plots, trials.
    artifacts: Mapped[dict | None] = mapped_column(default=dict)
    # A rerun (``driftloop runs rerun``) records the run it reproduces.
    rerun_of: Mapped[str | None] = mapped_column(sa.String(64))


# --- registry ------------------------------------------------------------------------------------------------


class ModelVersion(Base):
    __tablename__ = "model_versions"
    model: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    artifact_uri: Mapped[str] = mapped_column(sa.String(500))
    artifact_sha256: Mapped[str] = mapped_column(sa.String(64))
    dataset_version_id: Mapped[str] = mapped_column(sa.String(200))
    feature_set_uri: Mapped[str] = mapped_column(sa.String(500))
    metrics: Mapped[dict] = mapped_column(default=dict)
    lineage: Mapped[dict] = mapped_column(default=dict)
    gate: Mapped[dict] = mapped_column(default=dict)
    # registered | promoted | rejected | rolled_back (serving rolled it back; not a default rollback target)
    status: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Outbox: the events this version produced (ModelRegistered, then ModelPromoted/ModelRejected), stored in
    # the same transaction as the state they announce, so that a redelivery re-sends them with the same ids.
    outbox: Mapped[list] = mapped_column(default=list)
    decided_at: Mapped[datetime | None]
    # Input fields and types the model answers on, its features and its output (set at registration).
    signature: Mapped[dict | None]
    # User-set labels and text (PATCH /v1/models/{name}/versions/{v}); NULL reads as none.
    tags: Mapped[dict | None]
    description: Mapped[str | None] = mapped_column(sa.Text)


class ModelAlias(Base):
    __tablename__ = "model_aliases"
    model: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    alias: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    version: Mapped[int]
    event_id: Mapped[str | None] = mapped_column(sa.String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Who moved it (token name, or "registry" for the gate) and why; the ModelPromoted event it sent, re-sent
    # with the same id when the same move is asked again (e.g. after a failed publish).
    moved_by: Mapped[str | None] = mapped_column(sa.String(200))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    event: Mapped[dict | None]


# --- monitor -------------------------------------------------------------------------------------------------


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
    __table_args__ = (sa.UniqueConstraint("model", "seq"),)


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
    __table_args__ = (sa.UniqueConstraint("model", "window_index"),)


class MonitoredModel(Base):
    """The champion the monitor watches per model, so that a restart reloads its reference."""

    __tablename__ = "monitored_models"
    model: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    version: Mapped[int]
    dataset_version_id: Mapped[str] = mapped_column(sa.String(200))
    feature_set_uri: Mapped[str] = mapped_column(sa.String(500))
    event_id: Mapped[str] = mapped_column(sa.String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- serving -------------------------------------------------------------------------------------------------


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
