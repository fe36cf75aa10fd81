"""The event log and the consumer groups' processed-event ids: written by every service through the bus."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from driftloop.clients.db.models._base import Base, utcnow


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
    # The retention purge selects a group's old ids (driftloop.runtime.bus.purge_processed_events).
    __table_args__ = (sa.Index("ix_processed_events_consumer_processed_at", "consumer", "processed_at"),)
