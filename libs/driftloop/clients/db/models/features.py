"""Tables owned by the features service (others may read them, only it writes)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from driftloop.clients.db.models._base import Base, utcnow


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
