"""The ingestion outboxes (``driftloop.runtime.outbox``): events ingestion stores with their state and publishes
after the commit are published again, with their own id, when the broker never acknowledged them (it was down,
restarted empty, the producer was replaced), without waiting for a restart.

Dead letters (``DeadLetterOutbox``): a ``RecordRejected`` is published without waiting, after its row is stored (a
flood of bad records must not wait on the broker record by record); one not acknowledged is published again once no
producer can still be delivering it (``delivery_timeout`` after the row). A dead letter is marked announced
(``announced_at``) when its event is in the event log, which the bus writes on the broker's acknowledgement, or
when this outbox published it again and the broker acknowledged it. The marks are set here, a few hundred rows per
statement: the hot path does no more than store the row and publish.

Dataset versions (``VersionOutbox``): a cut publishes its ``DatasetVersionCreated`` after the commit and waits for
the acknowledgement; a version whose event is not in the event log after that is published again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from driftloop.clients.db.models import DatasetVersion, DeadLetter, EventRecord
from driftloop.contracts.events import Event, stored_event
from driftloop.contracts.payloads import RecordRejected
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.contracts.settings import Settings
from driftloop.runtime import outbox
from driftloop.runtime.bus import EventBus

from .datasets import created_event

# Rows read and marked per statement (an IN list every database takes).
CHUNK = 500
# Events published again per round at most: after a long outage the next rounds go on.
REPUBLISH_PER_ROUND = 5000
# Commit, publish, delivery report and event-log write of an event that did arrive, beyond the producer's timeout.
IN_FLIGHT_MARGIN = timedelta(seconds=30)
LIBRDKAFKA_DELIVERY_TIMEOUT_MS = 300_000


def delivery_timeout(settings: Settings) -> timedelta:
    """How long after its row a dead letter's event may still arrive: the producer gives a message up after its
    delivery timeout (librdkafka ``message.timeout.ms``, alias ``delivery.timeout.ms``), plus a margin."""
    config = settings.kafka.client_config
    ms = config.get("delivery.timeout.ms") or config.get("message.timeout.ms") or LIBRDKAFKA_DELIVERY_TIMEOUT_MS
    return timedelta(milliseconds=int(ms)) + IN_FLIGHT_MARGIN


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite hands back naive UTC


def rejected_event(row: DeadLetter, producer: str) -> Event[RecordRejected]:
    """The ``RecordRejected`` of a stored dead letter, with the id it was first published with."""
    payload = RecordRejected(
        stream=row.stream,
        reason=row.reason,
        field=row.field,
        message=row.message,
        source=row.source,
        schema_id=row.schema_id,
        original=row.original if row.original is not None else b"",
    )
    return stored_event(payload, event_id=row.event_id, occurred_at=_as_utc(row.created_at), producer=producer)


class DeadLetterOutbox(outbox.Outbox):
    service = "ingestion"

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        bus: EventBus,
        *,
        producer: str = "ingestion",
        in_flight: timedelta | None = None,
    ) -> None:
        super().__init__(bus)
        self.Session = session_factory
        self.producer = producer
        self.in_flight = in_flight if in_flight is not None else delivery_timeout(bus.settings)
        self._row_of: dict[str, int] = {}  # event id -> dead letter id, of the events handed to the drain
        self._republished: list[int] = []

    def unannounced(self, now: datetime | None = None) -> list[Event[Any]]:
        """Marks the dead letters whose event is in the event log; returns the events of those older than
        ``in_flight`` that are not, oldest first (at most ``REPUBLISH_PER_ROUND``)."""
        now = now or datetime.now(tz=UTC)
        before = now - self.in_flight
        late: list[int] = []
        after = 0
        while True:
            with self.Session() as session:
                rows = session.execute(
                    sa.select(DeadLetter.id, DeadLetter.event_id, DeadLetter.created_at)
                    .where(DeadLetter.announced_at.is_(None), DeadLetter.id > after)
                    .order_by(DeadLetter.id)
                    .limit(CHUNK)
                ).all()
                if not rows:
                    break
                delivered = set(
                    session.scalars(
                        sa.select(EventRecord.event_id).where(EventRecord.event_id.in_([r.event_id for r in rows]))
                    )
                )
            self._mark(r.id for r in rows if r.event_id in delivered)
            late.extend(r.id for r in rows if r.event_id not in delivered and _as_utc(r.created_at) < before)
            after = rows[-1].id
            if len(rows) < CHUNK:
                break
        late = late[:REPUBLISH_PER_ROUND]
        events: list[Event[Any]] = []
        for start in range(0, len(late), CHUNK):
            with self.Session() as session:
                query = sa.select(DeadLetter).where(DeadLetter.id.in_(late[start : start + CHUNK]))
                for row in session.scalars(query.order_by(DeadLetter.id)):
                    events.append(rejected_event(row, self.producer))
                    self._row_of[row.event_id] = row.id
        return events

    def republished(self, event: Event[Any]) -> None:
        self._republished.append(self._row_of.pop(event.id))

    def drain(self, now: datetime | None = None) -> int:
        try:
            return super().drain(now)
        finally:  # what the broker acknowledged before a failure is marked too
            done, self._republished = self._republished, []
            self._row_of.clear()
            self._mark(done)

    def _mark(self, ids: Iterable[int]) -> None:
        ids, at = list(ids), datetime.now(tz=UTC)
        for start in range(0, len(ids), CHUNK):
            with self.Session.begin() as session:
                session.execute(
                    sa.update(DeadLetter).where(DeadLetter.id.in_(ids[start : start + CHUNK])).values(announced_at=at)
                )


class VersionOutbox(outbox.Outbox):
    """The dataset versions of this process's streams whose ``DatasetVersionCreated`` is not in the event log, once
    the cut that published it is past its publish timeout."""

    service = "ingestion"

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        bus: EventBus,
        pipelines: Mapping[str, PipelineConfig],
        *,
        in_flight: timedelta | None = None,
    ) -> None:
        super().__init__(bus)
        self.Session = session_factory
        self.pipelines = pipelines  # the catalog, looked up at each round: pipelines are applied live
        self.in_flight = (
            in_flight
            if in_flight is not None
            else timedelta(seconds=bus.settings.kafka.publish_timeout_seconds) + IN_FLIGHT_MARGIN
        )

    def unannounced(self, now: datetime | None = None) -> list[Event[Any]]:
        before = (now or datetime.now(tz=UTC)) - self.in_flight
        streams = [cfg.stream.name for cfg in self.pipelines.values()]
        with self.Session() as session:
            missing = session.scalars(
                sa.select(DatasetVersion)
                .where(
                    DatasetVersion.stream.in_(streams),
                    ~sa.exists().where(EventRecord.event_id == DatasetVersion.event_id),
                )
                .order_by(DatasetVersion.stream, DatasetVersion.version)
            ).all()
        return [created_event(row, self.bus.producer_name) for row in missing if _as_utc(row.created_at) < before]
