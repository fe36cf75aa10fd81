"""Tables owned by the ingestion service (others may read them, only it writes)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from driftloop.clients.db.models._base import Base, utcnow


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
    # Kafka batches: the source offsets, so that a replay after a crash skips what already landed. Offsets are
    # identities only within one life of a topic: the topic's id (new when it is deleted and created again, or
    # when a broker without storage restarts) says which.
    kafka_partition: Mapped[int | None]
    kafka_topic_id: Mapped[str | None] = mapped_column(sa.String(64))
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
    # Set once its RecordRejected is known to be on the bus (in the event log, which is written on the broker's
    # acknowledgement); the ingestion outbox announces the others again, with their event id.
    announced_at: Mapped[datetime | None]
    # Only the dead letters still to announce: what the outbox reads at every round.
    __table_args__ = (
        sa.Index(
            "ix_dead_letters_unannounced",
            "id",
            postgresql_where=sa.text("announced_at IS NULL"),
            sqlite_where=sa.text("announced_at IS NULL"),
        ),
    )


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
