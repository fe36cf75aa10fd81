"""Kafka intake: consume every stream's topic in group ``driftloop-ingestion``, validate, land micro-batches.

Each ``consume()`` batch takes the columnar path (``columnar.decode_batch``: the batch's records decoded and
validated as numpy/Arrow columns, landed as Arrow tables); the records it cannot vouch for (other writer schemas,
anything malformed or refused) go one by one through ``handle``, the per-record path that gives dead letters
their reasons. Both feed the same per-partition micro-batches, in offset order.

Offsets are committed only after what precedes them is durable (landed as Parquet + ``LandedBatch`` row, or
dead-lettered). After a crash the uncommitted tail is re-read: records at or below the last landed offset of
their partition are skipped and dead letters are idempotent by source, so nothing lands twice. An offset names a
record only within one life of its topic: landed batches and dead letters carry the topic's id (Kafka's topic
UUID, new when the topic is created again or a broker without storage restarts), so after a reset the new records
at old offsets land instead of being taken for replays. Every record received is counted: ``received = landed +
dead_lettered + replay_skipped + waiting``.

The consumer heals like every group consumer of the platform (``driftloop.runtime.bus``: ``keep_consuming``,
``GroupMembership``): ``assigned`` (readiness ``kafka_assigned``) is false from a lost membership to the next
assignment, the partitions given back start from the committed offsets, a refused commit is retried after the
rejoin, and a consumer that fails (a fatal error, a broker that came back empty) is closed and a new one joins after
a pause, its topics made again. Its status is on ``/healthz`` with the bus consumers (restarts, why not ready).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fastavro
import numpy as np
import pyarrow as pa
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from driftloop.contracts.layout import landed_kafka_key
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.contracts.topics import DATASET_VERSION_CREATED, DOORBELL_RECORDS, RECORD_REJECTED
from driftloop.runtime.bus import (
    ConsumerLag,
    ConsumerStatus,
    EventBus,
    GroupMembership,
    commit_refused,
    ensure_topics,
    keep_consuming,
    topic_id,
)

from .columnar import decode_batch, warm_up
from .decoding import decode_record
from .landing import KafkaSource, Lander, arrow_schema, rows_to_table, table_to_parquet
from .validation import Rejection

log = logging.getLogger(__name__)

GROUP = "driftloop-ingestion"  # the default of settings.kafka.ingestion_group


@dataclass
class PartitionState:
    """Rows waiting to land for one partition, and where its committed offset may move to."""

    topic: str
    partition: int
    landed_up_to: int  # last offset already landed (from the database) in this life of the topic, -1 if none
    topic_id: str | None = None  # the topic's id (its life), None when the broker does not tell
    chunks: list[pa.Table] = field(default_factory=list)  # waiting rows as Arrow tables, in offset order
    chunk_rows: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)  # waiting rows of the per-record path, after chunks
    # Dead letters not stored yet: stored together (one transaction per poll), kept and retried if that fails.
    dead_letters: list[tuple[int, Rejection, str, bytes]] = field(default_factory=list)
    first_offset: int | None = None
    last_offset: int | None = None
    opened_at: float = 0.0
    last_seen: int | None = None
    committed: int | None = None

    def pending(self) -> int:
        return self.chunk_rows + len(self.rows)

    def commit_position(self) -> int | None:
        """The offset to commit: the first row or dead letter still waiting, else one past the last record
        handled."""
        waiting = [
            o for o in (self.first_offset, self.dead_letters[0][0] if self.dead_letters else None) if o is not None
        ]
        if waiting:
            return min(waiting)
        return None if self.last_seen is None else self.last_seen + 1


@dataclass
class IntakeCounters:
    """Since the process started: every record received, and where each went."""

    received: int = 0  # = landed + dead_lettered + replay_skipped + the records still waiting in memory
    landed: int = 0
    dead_lettered: int = 0
    replay_skipped: int = 0  # at or below the landed offset of the same life of the topic: landed before


# With nothing held (no rows waiting to land, no events unflushed) the loop waits this long for the next record; a
# record ends the wait at once. An idle intake then wakes twice a second, not twenty times (``poll_timeout``); land
# requests and pipeline changes are taken within it.
QUIET_POLL_SECONDS = 0.5


class KafkaIntake:
    def __init__(
        self,
        bus: EventBus,
        pipelines: Mapping[str, PipelineConfig],
        lander: Lander,
        on_landed: Callable[[str], None] = lambda _stream: None,
        *,
        poll_timeout: float = 0.05,
        batch_messages: int = 20000,
        flush_interval: float = 1.0,
    ) -> None:
        self.bus = bus
        self.lander = lander
        self.on_landed = on_landed
        self.poll_timeout = poll_timeout
        self._holding = False  # rows wait to land or events to be flushed: poll with ``poll_timeout``
        self.batch_messages = batch_messages
        # A commit that covers dead letters waits for their events (producer and event log flush, ~50 ms): such
        # commits happen at most this often, others at every poll; revokes and stops always commit.
        self.flush_interval = flush_interval
        self._flushed_at = 0.0
        self.pipelines = pipelines
        self.by_topic: dict[str, PipelineConfig] = {}
        self.reader_schemas: dict[str, Any] = {}
        self.reader_forms: dict[str, str] = {}
        self._writer_is_reader: dict[tuple[str, int], bool] = {}
        self.partitions: dict[tuple[str, int], PartitionState] = {}
        self._topic_ids: dict[str, str | None] = {}  # per topic, looked up at the first record after an assign
        self.counters: dict[str, IntakeCounters] = {}
        # Set by ``pipelines_changed`` (a pipeline applied live): the loop takes the new set between two polls.
        self._pipelines_changed = threading.Event()
        self._resubscribed = False
        self._derive()
        # The consumer's membership, restarts and last failure (on /healthz while the intake runs).
        self.status = ConsumerStatus(group=bus.settings.kafka.ingestion_group, topics=sorted(self.by_topic))
        self.last_error: str | None = None
        self._lock = threading.Lock()  # guards partitions between the loop and the rebalance callbacks
        self._land_requests: list[tuple[str, threading.Event]] = []
        self._unflushed_events = False
        self.running = False
        # driftloop_consumer_lag for the stream topics: records not landed (or dead-lettered) and committed yet.
        self.lag = ConsumerLag(bus.settings.kafka.ingestion_group)
        # The first Parquet write of a process imports pyarrow's pandas support (~0.3 s): pay it at start-up, not
        # in the middle of the first batch.
        for cfg in self.by_topic.values():
            table_to_parquet(arrow_schema(cfg.stream).empty_table())
            warm_up(cfg)

    def _derive(self) -> None:
        """The per-topic tables of the current pipelines (called at start and, in the loop, after a change)."""
        pipelines = list(self.pipelines.values())
        self.by_topic = {cfg.stream.topic: cfg for cfg in pipelines}
        # Parsed once: the decoder takes a parsed reader schema without re-keying it per record.
        self.reader_schemas = {cfg.stream.topic: fastavro.parse_schema(cfg.stream.avro_schema()) for cfg in pipelines}
        self.reader_forms = {
            topic: fastavro.schema.to_parsing_canonical_form(schema) for topic, schema in self.reader_schemas.items()
        }
        self._writer_is_reader = {}  # a changed stream schema: writers are compared with the new reader
        for cfg in pipelines:
            self.counters.setdefault(cfg.stream.name, IntakeCounters())

    def pipelines_changed(self) -> None:
        """A pipeline was applied or removed (``PipelineCatalog.on_change``): the loop re-subscribes."""
        self._pipelines_changed.set()

    def _take_pipelines(self, consumer: Consumer | None, membership: GroupMembership | None) -> None:
        """Between two polls: land what waits under the old configs, then subscribe to the new set of topics (a
        new stream's topic, a removed one's left; the rebalance assigns them)."""
        self._pipelines_changed.clear()
        if consumer is not None:
            try:
                self.flush_all(consumer)
            except Exception:  # e.g. the database is unreachable: keep the old set, try again after the next poll
                log.exception("ingestion: landing before taking the changed pipelines failed; retrying")
                self._pipelines_changed.set()
                time.sleep(1.0)
                return
        before = set(self.by_topic)
        kept = {cfg.stream.topic for cfg in self.pipelines.values()}
        with self._lock:  # a removed stream's partitions (landed above) are forgotten before its config
            for key in [k for k in self.partitions if k[0] not in kept]:
                del self.partitions[key]
        self._derive()
        added = [topic for topic in self.by_topic if topic not in before]
        for topic in added:
            cfg = self.by_topic[topic]
            table_to_parquet(arrow_schema(cfg.stream).empty_table())
            warm_up(cfg)
        self.status.topics = sorted(self.by_topic)
        if consumer is not None and membership is not None and set(self.by_topic) != before:
            self.ensure_topics()
            self._resubscribed = True
            self.status.assigned = False  # until the rebalance assigns the new set
            membership.subscribe(consumer, list(self.by_topic))
        log.info("ingestion: pipelines changed; streams %s", sorted(c.stream.name for c in self.by_topic.values()))

    # --- the loop ---------------------------------------------------------------------------------------------

    def ensure_topics(self) -> list[str]:
        settings = self.bus.settings
        return ensure_topics(settings, [*self.by_topic, RECORD_REJECTED.name, DATASET_VERSION_CREATED.name])

    @property
    def assigned(self) -> bool:
        """Whether the intake consumes: its consumer holds its partitions (trivially, with nothing to consume)."""
        return not self.by_topic or self.status.assigned

    def run(self, stop_event: threading.Event) -> None:
        while not self.by_topic:  # no stream yet: wait for a pipeline to be applied
            if stop_event.wait(0.5):
                return
            if self._pipelines_changed.is_set():
                self._take_pipelines(None, None)
        # The loop allocates a Message per record, so full collections come often, and each one walks every object
        # of the process (pyarrow, SQLAlchemy, the API...): a ~0.1 s stall. What is alive now lives as long as the
        # process: take it out of the collector's walks (collections still run for everything allocated later).
        gc.collect()
        gc.freeze()
        self.running = True
        self.bus.consumers.append(self.status)
        try:
            keep_consuming(self.status, lambda: self._consume(stop_event), stop_event)
        finally:
            self.running = False
            self.status.assigned = False
            with contextlib.suppress(ValueError):
                self.bus.consumers.remove(self.status)
            self._answer_land_requests()

    def _consume(self, stop_event: threading.Event) -> None:
        """One consumer's life: ``keep_consuming`` starts the next one after a failure."""
        self.ensure_topics()  # again in each life: a broker that came back empty has none
        _ = self.bus.producer  # connected (and its idempotent producer id obtained) before the first dead letter
        consumer = Consumer(self.bus.consumer_config(self.status.group))
        membership = GroupMembership(
            self.status, self.lag, ensure=self.ensure_topics, on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        membership.subscribe(consumer, list(self.by_topic))
        try:
            while not stop_event.is_set():
                if self._pipelines_changed.is_set():
                    self._take_pipelines(consumer, membership)
                self.poll_once(consumer, membership)
        finally:
            try:
                self.flush_all(consumer)
            except Exception:
                log.exception("ingestion: landing at the consumer's end failed; the next one re-reads from the commit")
            finally:
                with contextlib.suppress(Exception):
                    consumer.close()
                with self._lock:
                    ended = list(self.partitions)
                self._forget(ended)  # the next consumer starts from the committed offsets and the landed ones

    def poll_once(self, consumer: Consumer, membership: GroupMembership) -> None:
        # What the consumer has fetched already, at once; else wait for the next record only (a consume() of many
        # records that are not there would wait its whole timeout).
        messages = consumer.consume(num_messages=self.batch_messages, timeout=0)
        if not messages:
            timeout = self.poll_timeout if self._holding else QUIET_POLL_SECONDS
            messages = consumer.consume(num_messages=1, timeout=timeout)
            if messages:
                messages += consumer.consume(num_messages=self.batch_messages - 1, timeout=0)
        membership.check()  # raises when the consumer must be made again (its topics were gone)
        self.lag.update(consumer)
        records = [msg for msg in messages if msg.error() is None]  # one pass in C-speed comprehension
        if len(records) < len(messages):
            for msg in messages:
                if msg.error() is not None:
                    membership.usable(msg)  # a fatal error raises (a new consumer); a topic gone is made again
        if records:
            # Records: a cut and its cascade may follow. A resting stack wakes now, not when the cut is published.
            self.bus.ring_doorbell(DOORBELL_RECORDS)
            self.bus.note_activity()
        by_topic: dict[str, list[Message]] = {}
        if len(self.by_topic) == 1 and not self._resubscribed:  # one topic ever subscribed: every record is of it
            if records:
                by_topic[next(iter(self.by_topic))] = records
        else:
            for msg in records:
                if msg.topic() in self.by_topic:  # not a record of a stream just removed (fetched before it was)
                    by_topic.setdefault(msg.topic(), []).append(msg)
        blocked = False
        for topic, topic_messages in by_topic.items():
            blocked |= self.handle_batch(consumer, topic, topic_messages)
        self.land_due(time.monotonic())
        with self._lock:
            requests, self._land_requests = self._land_requests, []
            states = list(self.partitions.values())
        self.store_dead_letters(states)
        requested = {stream for stream, _ in requests}
        for state in states:
            if self.by_topic[state.topic].stream.name in requested:
                self._land(state)
        self.commit(consumer)
        for _, done in requests:
            done.set()
        self._holding = self._unflushed_events or any(state.pending() for state in states)
        if blocked:
            time.sleep(1.0)

    # --- one batch ---------------------------------------------------------------------------------------------

    def _is_fast(self, topic: str, schema_id: int) -> bool:
        """Whether records of ``schema_id`` are written with the stream's own schema (then no resolution is needed
        and the columnar decoder reads them); raises when the registry cannot say (the per-record path retries)."""
        known = self._writer_is_reader.get((topic, schema_id))
        if known is None:
            writer = self.bus.codec.writer_schema(schema_id)
            known = fastavro.schema.to_parsing_canonical_form(writer) == self.reader_forms[topic]
            self._writer_is_reader[(topic, schema_id)] = known
        return known

    def handle_batch(self, consumer: Consumer, topic: str, messages: list[Message]) -> bool:
        """Handle the messages of one topic from one ``consume()``; returns True when a partition had to stop
        (something not the records' fault, e.g. the database is unreachable): it is re-read from there later."""
        cfg = self.by_topic[topic]
        now = datetime.now(tz=UTC)
        partitions = np.array([msg.partition() for msg in messages], dtype=np.int64)
        numbers = np.unique(partitions)
        groups = (
            [messages]
            if numbers.size == 1
            else [[messages[i] for i in np.flatnonzero(partitions == number).tolist()] for number in numbers.tolist()]
        )
        blocked = False
        for number, group in zip(numbers.tolist(), groups, strict=True):
            values = [msg.value() for msg in group]
            if None in values:  # a tombstone: no bytes, refused by the per-record path as truncated
                values = [value or b"" for value in values]
            batch = decode_batch(values, cfg, lambda schema_id: self._is_fast(topic, schema_id), now)
            first, last = group[0].offset(), group[-1].offset()
            if last - first == len(group) - 1:  # offsets increase within a partition: these are consecutive
                offsets = np.arange(first, last + 1, dtype=np.int64)
            else:
                offsets = np.fromiter((msg.offset() for msg in group), dtype=np.int64, count=len(group))
            blocked |= self._handle_partition(consumer, topic, number, group, offsets, batch.accepted, batch.table)
        return blocked

    def _handle_partition(
        self,
        consumer: Consumer,
        topic: str,
        partition: int,
        messages: list[Message],
        offsets: np.ndarray,
        accepted: np.ndarray,
        table: pa.Table,
    ) -> bool:
        """The records of one partition, in offset order: accepted rows join the micro-batch as Arrow slices, the
        others go through ``handle``; records at or below the partition's landed offset are replays, skipped."""
        resume = int(offsets[0])  # the first offset not taken care of yet: where to re-read from after a failure
        state: PartitionState | None = None
        try:
            state = self._state(topic, partition)
            counters = self.counters[self.by_topic[topic].stream.name]
            fresh = offsets > state.landed_up_to
            skipped = int(fresh.size - np.count_nonzero(fresh))
            counters.replay_skipped += skipped
            counters.received += skipped
            accepted_at = np.flatnonzero(accepted)  # positions of the table's rows among the messages
            keep = fresh[accepted_at]
            if not keep.all():
                table, accepted_at = table.filter(pa.array(keep)), accepted_at[keep]
            appended = 0
            for position in np.flatnonzero(~accepted & fresh).tolist():
                before = int(np.searchsorted(accepted_at, position))
                if before > appended:
                    self._append_rows(
                        state, table.slice(appended, before - appended), offsets[accepted_at[appended:before]]
                    )
                    appended = before
                if position:
                    state.last_seen = int(offsets[position - 1])
                resume = int(offsets[position])
                self.handle(messages[position])
                resume += 1
            if appended < table.num_rows:
                self._append_rows(state, table.slice(appended), offsets[accepted_at[appended:]])
            state.last_seen = int(offsets[-1])
        except Exception as exc:
            if state is not None and state.last_offset is not None:
                resume = max(resume, state.last_offset + 1)  # rows already waiting in memory are not read twice
            # Not the records' fault (registry or database unreachable): re-read from there later, lose nothing.
            self.last_error = f"{topic}/{partition}/{resume}: {exc!r}"
            log.exception("ingestion: cannot handle %s now, will retry", self.last_error)
            consumer.seek(TopicPartition(topic, partition, resume))
            return True
        return False

    def store_dead_letters(self, states: list[PartitionState]) -> None:
        """Store the waiting dead letters of ``states``, one transaction per stream. On failure they stay waiting
        (commits do not pass them) and the next poll retries."""
        by_stream: dict[str, list[PartitionState]] = {}
        for state in states:
            if state.dead_letters:
                by_stream.setdefault(self.by_topic[state.topic].stream.name, []).append(state)
        for stream, waiting in by_stream.items():
            letters = [(rejection, source, value) for s in waiting for _, rejection, source, value in s.dead_letters]
            try:
                self.lander.dead_letters(stream, letters)
            except Exception as exc:
                self.last_error = f"dead letters of {stream}: {exc!r}"
                log.exception("ingestion: cannot store %d dead letters now, will retry", len(letters))
                continue
            for state in waiting:
                state.dead_letters = []
            self.counters[stream].dead_lettered += len(letters)
            self._unflushed_events = True

    def _append_rows(self, state: PartitionState, table: pa.Table, offsets: np.ndarray) -> None:
        """Accepted rows (with their offsets) join the partition's micro-batch, landing each time it is full."""
        cfg = self.by_topic[state.topic]
        limit = cfg.dataset.landing_batch_rows
        self.counters[cfg.stream.name].received += table.num_rows
        start = 0
        while start < table.num_rows:
            self._rows_to_chunk(state)
            if not state.pending():
                state.first_offset = int(offsets[start])
                state.opened_at = time.monotonic()
            take = min(table.num_rows - start, max(1, limit - state.pending()))
            state.chunks.append(table.slice(start, take))
            state.chunk_rows += take
            state.last_offset = int(offsets[start + take - 1])
            start += take
            if state.pending() >= limit:
                self._land(state)

    def _rows_to_chunk(self, state: PartitionState) -> None:
        if state.rows:
            state.chunks.append(rows_to_table(state.rows, self.by_topic[state.topic].stream))
            state.chunk_rows += len(state.rows)
            state.rows = []

    # --- one record --------------------------------------------------------------------------------------------

    def _state(self, topic: str, partition: int) -> PartitionState:
        with self._lock:
            state = self.partitions.get((topic, partition))
            if state is None:
                stream = self.by_topic[topic].stream.name
                topic_id = self.topic_id(topic)
                landed = self.lander.landed_up_to(stream, partition, topic_id)
                state = PartitionState(topic, partition, landed_up_to=landed, topic_id=topic_id)
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
            counters.received += 1
            state.last_seen = offset
            return
        source = f"kafka:{topic}/{partition}/{offset}{self._life(state.topic_id)}"
        value: bytes = msg.value() or b""
        record, rejection = decode_record(self.bus.codec, value, self.reader_schemas[topic], cfg, datetime.now(tz=UTC))
        counters.received += 1
        if rejection is not None:
            state.dead_letters.append((offset, rejection, source, value))
        else:
            assert record is not None
            if not state.pending():
                state.first_offset = offset
                state.opened_at = time.monotonic()
            state.rows.append(record)
            state.last_offset = offset
            if state.pending() >= cfg.dataset.landing_batch_rows:
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

    # --- the life of a topic ---------------------------------------------------------------------------------

    def topic_id(self, topic: str) -> str | None:
        """The topic's id (Kafka's topic UUID), cached until the next assignment; None when the broker does not
        tell (then replays are told by offset alone, as before ids were kept)."""
        if topic in self._topic_ids:
            return self._topic_ids[topic]
        found: str | None = None
        try:
            found = topic_id(self.bus.settings, topic)
        except Exception as exc:
            log.warning("ingestion: no topic id for %s (%s): replays are told by offset alone", topic, exc)
        self._topic_ids[topic] = found
        return found

    @staticmethod
    def _life(topic_id: str | None) -> str:
        """``@<topic id>`` (or nothing): a dead letter's or batch's source ends with the life of the topic it came
        from, so the same offset of a recreated topic is another source."""
        return "" if topic_id is None else f"@{topic_id}"

    # --- landing and committing --------------------------------------------------------------------------------

    def _land(self, state: PartitionState) -> None:
        if not state.pending():
            return
        cfg = self.by_topic[state.topic]
        self._rows_to_chunk(state)
        table = state.chunks[0] if len(state.chunks) == 1 else pa.concat_tables(state.chunks).combine_chunks()
        assert state.first_offset is not None and state.last_offset is not None
        key = landed_kafka_key(cfg.stream.name, state.partition, state.first_offset, state.last_offset, state.topic_id)
        offsets = f"{state.first_offset}-{state.last_offset}"
        source = f"kafka:{state.topic}/{state.partition}/{offsets}{self._life(state.topic_id)}"
        # Waiting dead letters are stored with the batch: once its offsets count as landed, a replay skips them.
        letters = [(rejection, letter_source, value) for _, rejection, letter_source, value in state.dead_letters]
        self.lander.land(
            cfg.stream,
            table,
            key,
            source,
            KafkaSource(state.partition, state.first_offset, state.last_offset, state.topic_id),
            dead_letters=letters,
        )
        if letters:
            self.counters[cfg.stream.name].dead_lettered += len(letters)
            state.dead_letters = []
            self._unflushed_events = True
        self.counters[cfg.stream.name].landed += table.num_rows
        state.landed_up_to = state.last_offset
        state.chunks, state.chunk_rows, state.first_offset, state.last_offset = [], 0, None, None
        self.on_landed(cfg.stream.name)

    def land_due(self, now: float) -> None:
        """Land the partitions whose batch is older than the stream's ``landing_batch_seconds``."""
        with self._lock:
            states = list(self.partitions.values())
        for state in states:
            seconds = self.by_topic[state.topic].dataset.landing_batch_seconds
            if state.pending() and now - state.opened_at >= seconds:
                self._land(state)

    def commit(self, consumer: Consumer, states: list[PartitionState] | None = None, *, force: bool = False) -> None:
        if self._unflushed_events and not force and time.monotonic() - self._flushed_at < self.flush_interval:
            return
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
            self._flushed_at = time.monotonic()
        try:
            consumer.commit(offsets=[tp for _, tp in offsets], asynchronous=False)
        except KafkaException as exc:
            # The group moved on without this member: nothing counts as committed; after the rejoin the records
            # are read again from the last commit (what landed meanwhile is skipped as replays).
            if not commit_refused(self.status, exc, ", ".join(f"{tp.topic}/{tp.partition}" for _, tp in offsets)):
                raise
            return
        for state, tp in offsets:
            state.committed = tp.offset
            self.lag.committed(tp.topic, tp.partition, tp.offset)

    def flush_all(self, consumer: Consumer, states: list[PartitionState] | None = None) -> None:
        with self._lock:
            states = list(self.partitions.values()) if states is None else states
        self.store_dead_letters(states)
        for state in states:
            self._land(state)
        self.commit(consumer, states, force=True)

    # --- rebalancing --------------------------------------------------------------------------------------------

    # Hooks of ``GroupMembership``, which keeps ``status.assigned`` and the lag; a lost membership is a revoke here.

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._lock:
            for p in partitions:  # looked up again: a reassignment may follow the topic's reset
                self._topic_ids.pop(p.topic, None)
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
        self._forget(revoked)
        log.info("ingestion revoke done %s", [(p.topic, p.partition) for p in partitions])

    def _forget(self, keys: list[tuple[str, int]] | set[tuple[str, int]]) -> None:
        """Drop the states of partitions this consumer no longer reads. What still waits in them (a landing or a
        dead letter that failed) is read again from the last commit, so it no longer counts as received."""
        with self._lock:
            for key in keys:
                state = self.partitions.pop(key, None)
                if state is not None:
                    counters = self.counters[self.by_topic[state.topic].stream.name]
                    counters.received -= state.pending() + len(state.dead_letters)

    # --- stats ---------------------------------------------------------------------------------------------------

    def pending_rows(self, stream: str) -> int:
        with self._lock:
            return sum(s.pending() for s in self.partitions.values() if self.by_topic[s.topic].stream.name == stream)
