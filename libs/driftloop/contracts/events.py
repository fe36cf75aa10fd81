"""The event envelope: every event says what caused it and which cascade it belongs to."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from driftloop.contracts.topics import TOPIC_BY_EVENT_TYPE, Topic


@dataclass(frozen=True)
class Envelope:
    event_id: str
    event_type: str
    occurred_at: datetime
    caused_by: str | None
    cascade_id: str
    producer: str

    def to_avro(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "occurred_at": self.occurred_at,
            "caused_by": self.caused_by,
            "cascade_id": self.cascade_id,
            "producer": self.producer,
        }

    @classmethod
    def from_avro(cls, data: dict[str, Any]) -> Envelope:
        occurred = data["occurred_at"]
        if isinstance(occurred, int):
            occurred = datetime.fromtimestamp(occurred / 1000, tz=UTC)
        return cls(
            event_id=data["event_id"],
            event_type=data["event_type"],
            occurred_at=occurred,
            caused_by=data.get("caused_by"),
            cascade_id=data["cascade_id"],
            producer=data["producer"],
        )


@dataclass(frozen=True)
class Event:
    """An envelope plus the event type's own fields (``data``), as in its Avro schema."""

    envelope: Envelope
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.envelope.event_id

    @property
    def type(self) -> str:
        return self.envelope.event_type

    @property
    def topic(self) -> Topic:
        return TOPIC_BY_EVENT_TYPE[self.type]

    @property
    def key(self) -> str:
        return str(self.data.get(self.topic.key, ""))

    def __getitem__(self, name: str) -> Any:
        return self.data[name]

    def to_avro(self) -> dict[str, Any]:
        return {"envelope": self.envelope.to_avro(), **self.data}

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> Event:
        data = dict(record)
        envelope = Envelope.from_avro(data.pop("envelope"))
        return cls(envelope=envelope, data=data)


def _now_millis() -> datetime:
    now = datetime.now(tz=UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def new_event(event_type: str, data: dict[str, Any], *, producer: str, cause: Event | None = None) -> Event:
    """Make an event. With a ``cause`` it joins the cause's cascade; without, it starts a new cascade."""
    if event_type not in TOPIC_BY_EVENT_TYPE:
        raise ValueError(f"unknown event type {event_type!r}; declare it in driftloop.contracts.topics")
    event_id = str(uuid.uuid4())
    envelope = Envelope(
        event_id=event_id,
        event_type=event_type,
        # Avro timestamp-millis: keep exactly what survives the round trip.
        occurred_at=_now_millis(),
        caused_by=cause.id if cause else None,
        cascade_id=cause.envelope.cascade_id if cause else event_id,
        producer=producer,
    )
    return Event(envelope=envelope, data=data)
