"""The event envelope: every event says what caused it and which cascade it belongs to, and carries a typed payload
(``driftloop.contracts.payloads``: the fields of its event type, as in its Avro schema)."""

from __future__ import annotations

import builtins
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from driftloop.contracts.payloads import PAYLOAD_TYPES, Payload
from driftloop.contracts.topics import Topic

P = TypeVar("P", bound=Payload, covariant=True)
# new_event takes its payload as an argument: an invariant variable for that.
NewP = TypeVar("NewP", bound=Payload)


@dataclass(frozen=True, slots=True)
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
    def from_avro(cls, data: Mapping[str, Any]) -> Envelope:
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


def payload_type(event_type: str) -> type[Payload]:
    """The payload class of an event type."""
    try:
        return PAYLOAD_TYPES[event_type]
    except KeyError:
        raise ValueError(
            f"unknown event type {event_type!r}: add schemas/events/{event_type}.avsc, declare its topic in "
            "driftloop.contracts.topics and run python -m driftloop.contracts.codegen"
        ) from None


@dataclass(frozen=True, slots=True)
class Event(Generic[P]):
    """An envelope plus the event type's own fields: ``payload``, e.g. ``Event[ModelPromoted]``."""

    envelope: Envelope
    payload: P

    @property
    def id(self) -> str:
        return self.envelope.event_id

    @property
    def type(self) -> str:
        return self.envelope.event_type

    @property
    def topic(self) -> Topic:
        return self.payload.topic

    @property
    def key(self) -> str:
        """The message key: the payload field the topic is keyed by (model or stream)."""
        return str(getattr(self.payload, self.payload.topic.key))

    def to_avro(self) -> dict[str, Any]:
        return {"envelope": self.envelope.to_avro(), **self.payload.to_avro()}

    @classmethod
    def from_avro(cls, record: Mapping[str, Any], payload_class: builtins.type[P] | None = None) -> Event[P]:
        """The event of a decoded Avro record. ``payload_class`` (the bus passes its topic's) must match the
        envelope's event type; without it, the envelope's event type chooses."""
        envelope = Envelope.from_avro(record["envelope"])
        kind: builtins.type[Any] = payload_class or payload_type(envelope.event_type)
        if kind.event_type != envelope.event_type:
            raise ValueError(f"a {envelope.event_type} event where {kind.event_type} events belong")
        return cls(envelope=envelope, payload=kind.from_avro(record))


def now_millis() -> datetime:
    """Now (UTC) to the millisecond: what an event's ``occurred_at`` keeps through Avro's timestamp-millis."""
    now = datetime.now(tz=UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def new_event_ids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs as strings, from one read of the OS's randomness: a fifth of the cost of
    ``str(uuid.uuid4())`` each, for events made by the thousand."""
    raw = bytearray(os.urandom(16 * count))
    for start in range(0, len(raw), 16):
        raw[start + 6] = raw[start + 6] & 0x0F | 0x40  # version 4
        raw[start + 8] = raw[start + 8] & 0x3F | 0x80  # RFC 4122 variant
    h = raw.hex()
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-{h[i + 12 : i + 16]}-{h[i + 16 : i + 20]}-{h[i + 20 : i + 32]}"
        for i in range(0, len(h), 32)
    ]


def new_events(
    payloads: Sequence[NewP], *, producer: str, cause: Event[Payload] | Envelope | None = None
) -> list[Event[NewP]]:
    """``new_event`` for many payloads made at one moment (e.g. the rows of one answered request): one timestamp,
    ids made together. Each event is its own cascade unless a ``cause`` is given."""
    caused_by = cause.envelope if isinstance(cause, Event) else cause
    occurred_at = now_millis()
    events: list[Event[NewP]] = []
    for payload, event_id in zip(payloads, new_event_ids(len(payloads)), strict=True):
        envelope = Envelope(
            event_id=event_id,
            event_type=payload.event_type,
            occurred_at=occurred_at,
            caused_by=caused_by.event_id if caused_by else None,
            cascade_id=caused_by.cascade_id if caused_by else event_id,
            producer=producer,
        )
        events.append(Event(envelope=envelope, payload=payload))
    return events


# Namespace of the ids of events made ``once_per`` something (version 5 UUIDs of it, producer and event type).
_ONCE_PER = uuid.UUID("6f1c2a4e-3b7d-5e8f-9a0b-1c2d3e4f5a6b")


def new_event(
    payload: NewP, *, producer: str, cause: Event[Payload] | Envelope | None = None, once_per: str | None = None
) -> Event[NewP]:
    """Make the event of ``payload`` (its class says the event type). With a ``cause`` (an event, or the envelope
    of one that is not at hand any more) it joins the cause's cascade; without, it starts a new cascade.

    ``once_per``: what the event is its producer's one event of this type for (a cause's id, a request id). Its id
    is derived from them, so the event made again after a crash (the cause redelivered before it was marked
    handled, a decision redone after its event went out) has the same id, and consumers handle an id once."""
    caused_by = cause.envelope if isinstance(cause, Event) else cause
    if once_per is not None:
        event_id = str(uuid.uuid5(_ONCE_PER, f"{once_per}/{producer}/{payload.event_type}"))
    else:
        event_id = str(uuid.uuid4())
    envelope = Envelope(
        event_id=event_id,
        event_type=payload.event_type,
        # Avro timestamp-millis: keep exactly what survives the round trip.
        occurred_at=now_millis(),
        caused_by=caused_by.event_id if caused_by else None,
        cascade_id=caused_by.cascade_id if caused_by else event_id,
        producer=producer,
    )
    return Event(envelope=envelope, payload=payload)


def stored_event(
    payload: NewP,
    *,
    event_id: str,
    occurred_at: datetime,
    producer: str,
    caused_by: str | None = None,
    cascade_id: str | None = None,
) -> Event[NewP]:
    """An event rebuilt from what was stored of it (an outbox, a reconcile): its first id, time and cascade, so a
    consumer that already handled it skips it. ``occurred_at`` is kept to the millisecond (Avro timestamp-millis)."""
    envelope = Envelope(
        event_id=event_id,
        event_type=payload.event_type,
        occurred_at=occurred_at.replace(microsecond=occurred_at.microsecond // 1000 * 1000),
        caused_by=caused_by,
        cascade_id=cascade_id or event_id,
        producer=producer,
    )
    return Event(envelope=envelope, payload=payload)
