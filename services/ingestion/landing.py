"""Landing: validated rows become one Parquet object in the object store plus a ``LandedBatch`` row; rejected
records become a ``RecordRejected`` event plus a ``DeadLetter`` row. Both are idempotent by source, so that a
replay after a crash overwrites or skips instead of duplicating."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa

from driftloop.clients.db.models import DeadLetter, LandedBatch
from driftloop.clients.objectstore import ObjectStore
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.fieldtypes import FIELD_TYPES
from driftloop.contracts.payloads import RecordRejected
from driftloop.contracts.pipeline import StreamSpec
from driftloop.runtime.bus import EventBus

from .validation import Rejection

log = logging.getLogger(__name__)


def arrow_schema(stream: StreamSpec) -> pa.Schema:
    """The landed Parquet schema: the stream's fields with their own types, event time as timestamp[ms, UTC]."""
    return pa.schema([pa.field(f.name, FIELD_TYPES[f.type].arrow, nullable=f.nullable) for f in stream.fields])


def rows_to_table(rows: list[dict[str, Any]], stream: StreamSpec) -> pa.Table:
    schema = arrow_schema(stream)
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)


def table_to_parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


@dataclass(frozen=True)
class KafkaSource:
    partition: int
    first_offset: int
    last_offset: int
    topic_id: str | None = None  # None: the broker did not tell


class Lander:
    """Writes landed batches and dead letters for all streams of one process."""

    def __init__(self, bus: EventBus, store: ObjectStore, producer: str = "ingestion") -> None:
        self.bus = bus
        self.store = store
        self.producer = producer
        self.Session = bus.Session

    # --- landing -------------------------------------------------------------------------------------------

    def land(
        self,
        stream: StreamSpec,
        rows: list[dict[str, Any]] | pa.Table,
        key: str,
        source: str,
        kafka: KafkaSource | None = None,
        dead_letters: list[tuple[Rejection, str, bytes]] | None = None,
    ) -> LandedBatch:
        """Write ``rows`` (dicts, or an Arrow table with ``arrow_schema(stream)``) as one Parquet object under
        ``key`` and record it. The key derives from the source (offsets, idempotency key), so the same source
        always gives the same key: when its row exists already (a replay after a crash, a retried request) nothing
        is written again, and a batch that is already part of a dataset version is never handed to the next cut a
        second time. ``dead_letters`` (see ``dead_letters``) are stored in the same transaction as the batch."""
        with self.Session() as session:
            existing = session.get(LandedBatch, key)
        if existing is not None:
            log.info("landed batch %s exists already (%s): replay skipped", key, existing.source)
            self.dead_letters(stream.name, dead_letters or [])
            return existing
        if isinstance(rows, pa.Table):
            table = rows
            bounds = pc.min_max(table.column(stream.event_time))
            low, high = bounds["min"].as_py(), bounds["max"].as_py()
        else:
            table = rows_to_table(rows, stream)
            times = [row[stream.event_time] for row in rows if row.get(stream.event_time) is not None]
            low, high = (min(times), max(times)) if times else (None, None)
        self.store.put_bytes(key, table_to_parquet(table))
        batch = LandedBatch(
            object_key=key,
            stream=stream.name,
            source=source,
            rows=table.num_rows,
            min_event_time=low,
            max_event_time=high,
            kafka_partition=kafka.partition if kafka else None,
            kafka_topic_id=kafka.topic_id if kafka else None,
            first_offset=kafka.first_offset if kafka else None,
            last_offset=kafka.last_offset if kafka else None,
        )
        fresh = self._new_dead_letters(stream.name, dead_letters or [])
        with self.Session.begin() as session:
            session.add(batch)
            session.add_all([row for row, _ in fresh])
        self._announce(fresh)
        log.info("landed %d rows of %s at %s (%s)", table.num_rows, stream.name, key, source)
        return batch

    def landed_up_to(self, stream: str, partition: int, topic_id: str | None = None) -> int:
        """The last Kafka offset of ``partition`` already landed for ``stream`` from the topic whose id is
        ``topic_id``, or -1. Batches of another id are of an earlier life of the topic (deleted and created
        again, or a broker that restarted without storage): its offsets start again at 0 and name other records.
        Batches landed without an id (before ids were kept, or from a broker that does not tell) count for the
        current life unless a batch of another id shows the topic was reset since."""
        with self.Session() as session:
            rows = session.execute(
                sa.select(LandedBatch.kafka_topic_id, sa.func.max(LandedBatch.last_offset))
                .where(LandedBatch.stream == stream, LandedBatch.kafka_partition == partition)
                .group_by(LandedBatch.kafka_topic_id)
            ).all()
        by_id = {found_id: int(last) for found_id, last in rows if last is not None}
        if topic_id is None:  # no id to tell the lives apart: every batch counts (never land twice)
            return max(by_id.values(), default=-1)
        if topic_id in by_id:
            return by_id[topic_id]
        if any(found_id not in (None, topic_id) for found_id in by_id):
            return -1
        return by_id.get(None, -1)

    # --- dead letters --------------------------------------------------------------------------------------

    def dead_letter(self, stream: str, rejection: Rejection, source: str, original: bytes) -> bool:
        """Store the DeadLetter row and publish its RecordRejected event. Returns False when this source was
        dead-lettered before (a replay): nothing is stored or published twice (an event of it that never reached
        the broker is published again by the outbox, ``outbox.py``)."""
        return self.dead_letters(stream, [(rejection, source, original)]) == 1

    def dead_letters(self, stream: str, letters: list[tuple[Rejection, str, bytes]]) -> int:
        """``dead_letter`` for many (rejection, source, original) at once: one query for the sources seen before,
        one transaction for the new rows, then their events. Returns how many were new."""
        fresh = self._new_dead_letters(stream, letters)
        if fresh:
            with self.Session.begin() as session:
                session.add_all([row for row, _ in fresh])
            self._announce(fresh)
        return len(fresh)

    def _new_dead_letters(
        self, stream: str, letters: list[tuple[Rejection, str, bytes]]
    ) -> list[tuple[DeadLetter, Event[RecordRejected]]]:
        """The rows and events of the ``letters`` not stored before (a replay after a crash stores nothing twice;
        the outbox announces a stored one whose event never reached the broker)."""
        if not letters:
            return []
        sources = [source for _, source, _ in letters]
        with self.Session() as session:
            seen = set(session.scalars(sa.select(DeadLetter.source).where(DeadLetter.source.in_(sources))))
        fresh: list[tuple[DeadLetter, Event[RecordRejected]]] = []
        for rejection, source, original in letters:
            if source in seen:
                continue
            seen.add(source)
            event = self._rejected_event(stream, rejection, source, original)
            row = DeadLetter(
                stream=stream,
                reason=rejection.reason,
                field=rejection.field,
                message=rejection.message,
                source=source,
                event_id=event.id,
                original=original,
                schema_id=rejection.schema_id,
            )
            fresh.append((row, event))
        return fresh

    def _announce(self, fresh: list[tuple[DeadLetter, Event[RecordRejected]]]) -> None:
        # Without waiting for the broker: what it never acknowledges is published again by the outbox.
        for row, event in fresh:
            self.bus.publish(event, wait=False)
            log.info("dead letter %s: %s (%s)", row.source, row.reason, row.message)

    def _rejected_event(self, stream: str, rejection: Rejection, source: str, original: bytes) -> Event[RecordRejected]:
        rejected = RecordRejected(
            stream=stream,
            reason=rejection.reason,
            field=rejection.field,
            message=rejection.message,
            source=source,
            schema_id=rejection.schema_id,
            original=original,
        )
        return new_event(rejected, producer=self.producer)


def json_bytes(value: Any) -> bytes:
    def default(obj: Any) -> Any:
        if isinstance(obj, datetime):
            return obj.isoformat()
        return str(obj)

    return json.dumps(value, default=default, separators=(",", ":")).encode()
