"""Kafka intake: consume every stream's topic in group ``driftloop-ingestion``, validate, land micro-batches.

Offsets are committed only after what precedes them is durable (landed as Parquet + ``LandedBatch`` row, or
dead-lettered). After a crash the uncommitted tail is re-read: records at or below the last landed offset of
their partition are skipped and dead letters are idempotent by source, so nothing lands twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fastavro
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from driftloop.bus import ConsumerLag, EventBus, ensure_topics
from driftloop.errors import ValidationFailed, WireFormatError
from driftloop.layout import landed_kafka_key
from driftloop.pipeline import PipelineConfig
from driftloop.topics import DATASET_VERSION_CREATED, RECORD_REJECTED

from .landing import KafkaSource, Lander
from .validation import check_size, rejection_from_failure, rejection_from_wire_error, validate_decoded

log = logging.getLogger(__name__)

GROUP = "driftloop-ingestion"  # the default of settings.kafka.ingestion_group


@dataclass
class PartitionState:
    """Rows waiting to land for one partition, and where its committed offset may move to."""

    topic: str
    partition: int
    landed_up_to: int  # last offset already landed (from the database), -1 if none
    rows: list[dict[str, Any]] = field(default_factory=list)
    first_offset: int | None = None
    last_offset: int | None = None
    opened_at: float = 0.0
    last_seen: int | None = None
    committed: int | None = None

    def commit_position(self) -> int | None:
        """The offset to commit: the first row still waiting, else one past the last record handled."""
        if self.first_offset is not None:
            return self.first_offset
        return None if self.last_seen is None else self.last_seen + 1


@dataclass
class IntakeCounters:
    received: int = 0
    landed: int = 0
    dead_lettered: int = 0
    replay_skipped: int = 0


class KafkaIntake:
    def __init__(
        self,
        bus: EventBus,
        pipelines: dict[str, PipelineConfig],
        lander: Lander,
        on_landed: Callable[[str], None] = lambda _stream: None,
        *,
        poll_timeout: float = 0.2,
    ) -> None:
        self.bus = bus
        self.lander = lander
        self.on_landed = on_landed
        self.poll_timeout = poll_timeout
        self.by_topic = {cfg.stream.topic: cfg for cfg in pipelines.values()}
        # Parsed once: the decoder takes a parsed reader schema without re-keying it per record.
        self.reader_schemas = {
            cfg.stream.topic: fastavro.parse_schema(cfg.stream.avro_schema()) for cfg in pipelines.values()
        }
        self.partitions: dict[tuple[str, int], PartitionState] = {}
        self.counters: dict[str, IntakeCounters] = {cfg.stream.name: IntakeCounters() for cfg in pipelines.values()}
        self.assigned = not self.by_topic  # nothing to consume: trivially ready
        self.last_error: str | None = None
        self._lock = threading.Lock()  # guards partitions between the loop and the rebalance callbacks
        self._land_requests: list[tuple[str, threading.Event]] = []
        self._unflushed_events = False
        self.running = False
        # driftloop_consumer_lag for the stream topics: records not landed (or dead-lettered) and committed yet.
        self.lag = ConsumerLag(bus.settings.kafka.ingestion_group)

    # --- the loop ---------------------------------------------------------------------------------------------

    def ensure_topics(self) -> None:
        settings = self.bus.settings
        ensure_topics(settings, [*self.by_topic, RECORD_REJECTED.name, DATASET_VERSION_CREATED.name])

    def run(self, stop_event: threading.Event) -> None:
        if not self.by_topic:
            return
        self.ensure_topics()
        self.running = True
        consumer = Consumer(self.bus.consumer_config(self.bus.settings.kafka.ingestion_group))
        consumer.subscribe(
            list(self.by_topic),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        try:
            while not stop_event.is_set():
                self.poll_once(consumer)
        finally:
            self.running = False
            try:
                self.flush_all(consumer)
            finally:
                consumer.close()
                self._answer_land_requests()

    def poll_once(self, consumer: Consumer) -> None:
        messages = consumer.consume(num_messages=500, timeout=self.poll_timeout)
        self.lag.update(consumer)
        blocked: set[tuple[str, int]] = set()
        for msg in messages:
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("ingestion consumer: %s", msg.error())
                continue
            tp = (msg.topic(), msg.partition())
            if tp in blocked:
                continue
            try:
                self.handle(msg)
            except Exception as exc:
                # Not the record's fault (registry or database unreachable): re-read it later, lose nothing.
                self.last_error = f"{msg.topic()}/{msg.partition()}/{msg.offset()}: {exc!r}"
                log.exception("ingestion: cannot handle %s now, will retry", self.last_error)
                blocked.add(tp)
                consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
        self.land_due(time.monotonic())
        with self._lock:
            requests, self._land_requests = self._land_requests, []
            states = list(self.partitions.values())
        requested = {stream for stream, _ in requests}
        for state in states:
            if self.by_topic[state.topic].stream.name in requested:
                self._land(state)
        self.commit(consumer)
        for _, done in requests:
            done.set()
        if blocked:
            time.sleep(1.0)

    # --- one record --------------------------------------------------------------------------------------------

    def _state(self, topic: str, partition: int) -> PartitionState:
        with self._lock:
            state = self.partitions.get((topic, partition))
            if state is None:
                stream = self.by_topic[topic].stream.name
                state = PartitionState(topic, partition, landed_up_to=self.lander.landed_up_to(stream, partition))
                self.partitions[(topic, partition)] = state
            return state

    def handle(self, msg: Message) -> None:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        cfg = self.by_topic[topic]
        stream = cfg.stream
        counters = self.counters[stream.name]
        state = self._state(topic, partition)
        if offset <= state.landed_up_to:
            counters.replay_skipped += 1
            state.last_seen = offset
            return
        source = f"kafka:{topic}/{partition}/{offset}"
        value: bytes = msg.value() or b""
        schema_id: int | None = None
        try:
            check_size(len(value), stream)
            try:
                schema_id, record = self.bus.codec.decode(value, reader_schema=self.reader_schemas[topic])
            except WireFormatError as exc:
                rejection = rejection_from_wire_error(exc)
                record = None
            else:
                rejection = validate_decoded(record, cfg, datetime.now(tz=UTC), schema_id)
        except ValidationFailed as exc:
            rejection, record = rejection_from_failure(exc, schema_id), None
        counters.received += 1
        if rejection is not None:
            self.lander.dead_letter(stream.name, rejection, source, value)
            self._unflushed_events = True
            counters.dead_lettered += 1
        else:
            assert record is not None
            if not state.rows:
                state.first_offset = offset
                state.opened_at = time.monotonic()
            state.rows.append(record)
            state.last_offset = offset
            if len(state.rows) >= cfg.dataset.landing_batch_rows:
                self._land(state)
        state.last_seen = offset

    def request_land(self, stream: str, timeout: float = 30.0) -> None:
        """Land the rows of ``stream`` still waiting in memory now (e.g. before an on-demand cut); returns
        once the Kafka loop has done it (or at once when the loop is not running)."""
        if not self.running:
            return
        done = threading.Event()
        with self._lock:
            self._land_requests.append((stream, done))
        done.wait(timeout)

    def _answer_land_requests(self) -> None:
        with self._lock:
            requests, self._land_requests = self._land_requests, []
        for _, done in requests:
            done.set()

    # --- landing and committing --------------------------------------------------------------------------------

    def _land(self, state: PartitionState) -> None:
        if not state.rows:
            return
        cfg = self.by_topic[state.topic]
        assert state.first_offset is not None and state.last_offset is not None
        key = landed_kafka_key(cfg.stream.name, state.partition, state.first_offset, state.last_offset)
        source = f"kafka:{state.topic}/{state.partition}/{state.first_offset}-{state.last_offset}"
        self.lander.land(
            cfg.stream, state.rows, key, source, KafkaSource(state.partition, state.first_offset, state.last_offset)
        )
        self.counters[cfg.stream.name].landed += len(state.rows)
        state.landed_up_to = state.last_offset
        state.rows, state.first_offset, state.last_offset = [], None, None
        self.on_landed(cfg.stream.name)

    def land_due(self, now: float) -> None:
        """Land the partitions whose batch is older than the stream's ``landing_batch_seconds``."""
        with self._lock:
            states = list(self.partitions.values())
        for state in states:
            seconds = self.by_topic[state.topic].dataset.landing_batch_seconds
            if state.rows and now - state.opened_at >= seconds:
                self._land(state)

    def commit(self, consumer: Consumer, states: list[PartitionState] | None = None) -> None:
        with self._lock:
            states = list(self.partitions.values()) if states is None else states
        offsets = []
        for state in states:
            position = state.commit_position()
            if position is not None and position != state.committed:
                offsets.append((state, TopicPartition(state.topic, state.partition, position)))
        if not offsets:
            return
        # Dead-letter events must be on the broker before the offsets that cover them are committed (a flush
        # waits for the broker: skipped when no event went out since the last one).
        if self._unflushed_events:
            self.bus.flush()
            self._unflushed_events = False
        consumer.commit(offsets=[tp for _, tp in offsets], asynchronous=False)
        for state, tp in offsets:
            state.committed = tp.offset
            self.lag.committed(tp.topic, tp.partition, tp.offset)

    def flush_all(self, consumer: Consumer, states: list[PartitionState] | None = None) -> None:
        with self._lock:
            states = list(self.partitions.values()) if states is None else states
        for state in states:
            self._land(state)
        self.commit(consumer, states)

    # --- rebalancing --------------------------------------------------------------------------------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned = True
        self.lag.assigned(partitions)
        # Before any record of these partitions is handled or committed: the crash tests kill on this line.
        log.info("ingestion assigned %s", [(p.topic, p.partition) for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Logged before the flush and after it: a crash after the first line and before the next "assigned" is a
        # crash inside the rebalance (the crash tests kill the process on the first line).
        log.info("ingestion revoke started %s", [(p.topic, p.partition) for p in partitions])
        revoked = {(p.topic, p.partition) for p in partitions}
        with self._lock:
            states = [s for key, s in self.partitions.items() if key in revoked]
        try:
            self.flush_all(consumer, states)
        except Exception:
            log.exception("ingestion: landing on revoke failed; the new owner re-reads from the last commit")
        with self._lock:
            for key in revoked:
                self.partitions.pop(key, None)
        self.lag.revoked(partitions)
        log.info("ingestion revoke done %s", [(p.topic, p.partition) for p in partitions])

    # --- stats ---------------------------------------------------------------------------------------------------

    def pending_rows(self, stream: str) -> int:
        with self._lock:
            return sum(len(s.rows) for s in self.partitions.values() if self.by_topic[s.topic].stream.name == stream)
