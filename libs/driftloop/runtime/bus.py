"""The event bus: Avro events on Kafka in the Confluent wire format, recorded in the event log.

Producers: ``EventBus.publish`` encodes, sends and (after delivery) records the event in the database, so a
cascade can be followed by id. Consumers: ``EventBus.run_consumer`` decodes, hands each event to a handler
exactly once per consumer group (idempotency in the database, because the embedded broker has no real
transactions), and commits the offset only after the handler returned.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import Counter
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from driftloop.clients.credentials import schema_registry_client_config
from driftloop.clients.db import create_engine_for, session_factory
from driftloop.clients.db.models import EventRecord, ProcessedEvent
from driftloop.clients.retry import Backoff, retry
from driftloop.contracts.events import Event, payload_type
from driftloop.contracts.payloads import Payload
from driftloop.contracts.schemas import event_schema
from driftloop.contracts.settings import Settings
from driftloop.contracts.topics import BUS_DOORBELL_TOPIC, EVENT_TOPICS, STREAM_TOPIC_PREFIX, Topic
from driftloop.errors import DriftloopError, WireFormatError
from driftloop.runtime.metrics import (
    CASCADE_STEPS,
    CASCADES_STARTED,
    CONSUMER_COMMITTED_OFFSET,
    CONSUMER_LAG,
    EVENT_HANDLE_SECONDS,
    EVENTS_CONSUMED,
    EVENTS_PUBLISHED,
    PUBLISH_FAILURES,
)
from driftloop.runtime.retention import cutoff, purge_in_batches, utcnow
from driftloop.runtime.serde import AvroCodec, RecordWriter, json_safe

log = logging.getLogger(__name__)

EventHandler = Callable[[Event[Any]], None]
# Offsets are committed synchronously after each event, so only the last events a group handled before it stopped
# can be uncommitted (and redelivered later): rows this much older than the group's newest row are committed.
REDELIVERY_MARGIN = timedelta(hours=1)


def purge_processed_events(
    engine: sa.Engine,
    *,
    retention_days: float,
    batch_rows: int,
    consumers: Iterable[str] | None = None,
    now: datetime | None = None,
) -> int:
    """Delete processed-event ids (redelivery dedupe) older than the retention AND older than the consumer
    group's newest row by ``REDELIVERY_MARGIN`` (past its committed position: never redelivered again), for
    ``consumers`` (default: every group). 0 days keeps them for ever. Returns rows deleted."""
    old = cutoff(now or utcnow(), retention_days)
    if old is None:
        return 0
    with engine.connect() as conn:
        query = sa.select(ProcessedEvent.consumer, sa.func.max(ProcessedEvent.processed_at)).group_by(
            ProcessedEvent.consumer
        )
        if consumers is not None:
            query = query.where(ProcessedEvent.consumer.in_(list(consumers)))
        newest = conn.execute(query).tuples().all()
    deleted = 0
    for consumer, newest_at in newest:
        if newest_at is None:
            continue
        if newest_at.tzinfo is None:  # SQLite gives back naive UTC
            newest_at = newest_at.replace(tzinfo=UTC)
        committed_before = newest_at - REDELIVERY_MARGIN
        expired = sa.and_(
            ProcessedEvent.consumer == consumer,
            ProcessedEvent.processed_at < min(old, committed_before),
        )
        deleted += purge_in_batches(
            engine,
            "processed_events",
            ProcessedEvent.event_id,
            expired,
            batch_rows,
        )
    return deleted


def heartbeat_interval_ms(settings: Settings) -> int:
    """The group heartbeat interval of every consumer (bus, intake, faust): a third of the session timeout, Kafka's
    advice (a member misses two before it is dropped). A member learns of a rebalance from its next heartbeat,
    and the embedded broker holds every join half a session timeout anyway, so a shorter interval only adds
    requests: at rest the heartbeats were three quarters of what the broker answers."""
    return max(500, settings.kafka.session_timeout_ms // 3)


def _retention_ms(hours: float) -> str:
    return "-1" if hours == 0 else str(int(hours * 3_600_000))


def topic_config(settings: Settings, name: str) -> dict[str, str]:
    """The configs a driftloop topic is created with: state-like topics (``kafka.compacted_topics``: the last
    record per key is what matters) compacted; event and stream topics deleted after their retention (explicit,
    so that no broker default decides it)."""
    kafka = settings.kafka
    if name in kafka.compacted_topics:
        return {"cleanup.policy": "compact"}
    hours = kafka.stream_retention_hours if name.startswith(STREAM_TOPIC_PREFIX) else kafka.event_retention_hours
    return {"cleanup.policy": "delete", "retention.ms": _retention_ms(hours)}


def faust_broker_options(settings: Settings) -> dict[str, Any]:
    """``faust.App`` keyword arguments reaching this deployment's brokers with its authentication settings (the
    same ``kafka.*`` settings every confluent-kafka client gets through ``Settings.kafka_config``)."""
    import ssl

    import faust

    kafka = settings.kafka
    options: dict[str, Any] = {"broker": [f"kafka://{s.strip()}" for s in kafka.bootstrap_servers.split(",")]}
    protocol = kafka.security_protocol
    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=kafka.ssl_ca_location or None)
    if protocol.startswith("SASL_"):
        settings.kafka_security_config()  # the readable error for a missing user
        options["broker_credentials"] = faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value(),
            mechanism=kafka.sasl_mechanism,
            ssl_context=context,
        )
    elif protocol == "SSL":
        options["broker_credentials"] = faust.SSLCredentials(context)
    return options


# How often aiokafka's background fetcher in a faust app plans again while its fetch is held by the broker.
FAUST_FETCHER_REPLAN_SECONDS = 1.0


def calm_faust_fetcher(app: Any) -> None:
    """Make ``app``'s (a ``faust.App``) aiokafka fetcher plan again every ``FAUST_FETCHER_REPLAN_SECONDS``, not
    aiokafka's 0.2 s (``consumer_timeout_ms``, which faust does not expose): at rest it woke each faust app five
    times a second with nothing to do. The fetcher still wakes at once when a fetch returns, records are taken, a
    partition is resumed or the assignment changes. Set on each assignment (the consumer and its fetcher exist by
    then); a faust or aiokafka without these attributes is left as it is."""

    @app.on_partitions_assigned.connect
    async def _calm_fetcher(_app: Any, _assigned: Any, **_: Any) -> None:
        thread = getattr(app.consumer, "_thread", None)
        fetcher = getattr(getattr(thread, "_consumer", None), "_fetcher", None)
        if fetcher is not None and hasattr(fetcher, "_fetcher_timeout"):
            fetcher._fetcher_timeout = FAUST_FETCHER_REPLAN_SECONDS
        else:
            log.info("faust app %s: aiokafka's fetcher not found; it plans at its own pace", app.conf.id)


def ensure_topics(settings: Settings, names: Iterable[str], partitions: int | None = None) -> list[str]:
    """Create the topics that do not exist yet, with the configured partition count and ``topic_config``; returns
    the names created. (Topics that exist keep their configs: change those with the broker's tools.)"""
    admin = AdminClient(settings.kafka_config())
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [
        NewTopic(
            n,
            num_partitions=partitions or settings.kafka.partitions,
            replication_factor=settings.kafka.replication_factor,
            config=topic_config(settings, n),
        )
        for n in dict.fromkeys(names)
        if n not in existing
    ]
    if not wanted:
        return []
    for name, future in admin.create_topics(wanted, operation_timeout=10).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise DriftloopError(f"creating topic {name} failed: {exc}") from exc
    return [t.topic for t in wanted]


def topic_id(settings: Settings, topic: str) -> str | None:
    """The topic's id (Kafka's topic UUID) as 32 hex digits (safe in object keys and sources): it names one life of
    the topic, new when the topic is created again or a broker without storage restarts. None when the broker does
    not tell; raises when it cannot be asked."""
    admin = AdminClient(settings.kafka_config())
    described = admin.describe_topics(TopicCollection([topic]))[topic].result(timeout=10)
    uuid = described.topic_id
    if uuid is None:
        return None
    return (
        f"{uuid.get_most_significant_bits() & (2**64 - 1):016x}{uuid.get_least_significant_bits() & (2**64 - 1):016x}"
    )


# ``INSERT ... ON CONFLICT DO NOTHING`` by dialect; another database looks the ids up first.
_INSERT_IGNORING_DUPLICATES: dict[str, Any] = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}

# Events per event-log transaction: a commit (and its fsync) costs as much as writing hundreds of rows.
WRITE_BATCH_EVENTS = 2000


class EventLog:
    """The database copy of every event, written in batches off the hot path."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        # A SimpleQueue (one C call per put): every published event passes here, from its delivery report.
        self._queue: queue.SimpleQueue[Event[Payload] | None] = queue.SimpleQueue()
        self._unwritten = 0  # submitted and not yet written (or given up on): what ``flush`` waits for
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @staticmethod
    def to_record(event: Event[Payload]) -> dict[str, Any]:
        payload = event.payload
        return {
            "event_id": event.id,
            "event_type": event.type,
            "topic": event.topic.name,
            "cascade_id": event.envelope.cascade_id,
            "caused_by": event.envelope.caused_by,
            "producer": event.envelope.producer,
            "occurred_at": event.envelope.occurred_at,
            "model": getattr(payload, "model", None),
            "stream": getattr(payload, "stream", None),
            # The Avro record as JSON: the timeline and dashboard read these payloads as dicts.
            "payload": json_safe(payload.to_avro()),
        }

    def write(self, events: list[Event[Payload]]) -> None:
        if not events:
            return
        # One Core executemany per batch (no ORM unit of work); an event already stored (a redelivered copy, an
        # outbox's second announcement) is skipped by the database, not looked up first.
        rows = list({e.id: self.to_record(e) for e in events}.values())
        with self.engine.begin() as conn:
            dialect = conn.dialect.name
            if dialect in _INSERT_IGNORING_DUPLICATES:
                conn.execute(_INSERT_IGNORING_DUPLICATES[dialect](EventRecord).on_conflict_do_nothing(), rows)
                return
            known = set(
                conn.scalars(
                    sa.select(EventRecord.event_id).where(EventRecord.event_id.in_([r["event_id"] for r in rows]))
                )
            )
            fresh = [r for r in rows if r["event_id"] not in known]
            if fresh:
                conn.execute(sa.insert(EventRecord), fresh)

    def submit(self, event: Event[Payload]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._drain, name="event-log", daemon=True)
            self._thread.start()
        with self._count_lock:
            self._unwritten += 1
        self._queue.put(event)

    def _drain(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < WRITE_BATCH_EVENTS:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            try:
                # A database that is briefly unreachable or locked: wait for it.
                retry(
                    functools.partial(self.write, batch),
                    attempts=5,
                    retry_on=(sa.exc.OperationalError,),
                    first_delay=0.5,
                    max_delay=4.0,
                    what="event log write",
                )
            except sa.exc.OperationalError:
                log.exception("event log: gave up recording %d events after retries", len(batch))
            except Exception:
                # The events are on Kafka already; losing their database copy must not stop the writer.
                log.exception("event log: %d events could not be recorded", len(batch))
            with self._count_lock:
                self._unwritten -= len(batch)

    def flush(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self._unwritten > 0 and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        if self._thread is not None:
            self.flush()
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None


@functools.cache
def _delivered_counters(event_type: str) -> tuple[Any, Any, Any]:
    """The counters a delivered event increments (published, cascade started, cascade step), looked up once per
    event type: a delivery report comes for every event."""
    return (
        EVENTS_PUBLISHED.labels(event_type),
        CASCADES_STARTED.labels(event_type),
        CASCADE_STEPS.labels(event_type),
    )


class _BatchReports:
    """The delivery report handler of one ``produce_encoded`` call: one object for its events (not a closure per
    event); the delivered ones are counted once every report came. Reports may be served by any thread's poll."""

    __slots__ = ("bus", "delivered", "event_type", "lock", "remaining", "total")

    def __init__(self, bus: EventBus, event_type: str, total: int) -> None:
        self.bus = bus
        self.event_type = event_type
        self.total = total
        self.remaining = total  # reports still to come
        self.delivered = 0
        self.lock = threading.Lock()

    def expect(self, produced: int) -> None:
        """Only ``produced`` of the events went to the producer: no report comes for the others."""
        self._settle(self.total - produced, 0)

    def __call__(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.bus._delivery_failed(err, self.event_type)
            log.error("a %s event was not delivered: %s", self.event_type, err)
        self._settle(1, err is None)

    def _settle(self, reported: int, delivered: int) -> None:
        with self.lock:
            self.remaining -= reported
            self.delivered += delivered
            done = self.delivered if self.remaining <= 0 else 0
            if done:
                self.delivered = 0
        if done:
            published, started, _ = _delivered_counters(self.event_type)
            published.inc(done)
            started.inc(done)  # root events: each starts its cascade


# A client recovers from these by itself; anything else (fatal producer errors, a consumer that lost its group
# membership for good, a broker restarted empty) makes the bus drop the client and start a new one.
CONSUMER_RESTART_BACKOFF = (0.5, 15.0)
CLIENT_RESETS = Counter(
    "driftloop_bus_client_resets_total",
    "Kafka clients dropped and made again after a fatal error or a lost group membership",
    ["client"],
)


@dataclass
class ConsumerStatus:
    group: str
    topics: list[str]
    assigned: bool = False
    # How often its Kafka consumer was dropped and made again (lost membership, a fatal error).
    restarts: int = 0
    handled: int = 0
    failed: int = 0
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class EventBus:
    """Publish and consume driftloop events. One instance per process."""

    def __init__(self, settings: Settings, producer_name: str, engine: sa.Engine | None = None) -> None:
        self.settings = settings
        self.producer_name = producer_name
        self.engine = engine or create_engine_for(settings.database_url)
        self.Session = session_factory(self.engine)
        self.codec = AvroCodec.from_config(schema_registry_client_config(settings))
        self.event_log = EventLog(self.engine)
        self._writers: dict[str, RecordWriter] = {}  # by event type
        self._producer: Producer | None = None
        self._producer_lock = threading.Lock()
        # Set by librdkafka's error callback on a fatal error (fenced, unknown producer id): the next use makes a
        # new producer (an idempotent producer cannot go on after one).
        self._producer_fatal: str | None = None
        self.producer_resets = 0
        self.stop_event = threading.Event()
        self.consumers: list[ConsumerStatus] = []
        # Resting (``kafka.rest_after_seconds``): the process is awake until this (monotonic), kept ahead by every
        # event it takes or publishes and by the doorbell; it rings the doorbell at most every half of that.
        self.rest_after = settings.kafka.consumers_rest_after
        self._awake_until = time.monotonic() + self.rest_after
        self._doorbell_rung = -float("inf")
        self._woken_by_doorbell: list[Callable[[str], None]] = []

    # --- resting -----------------------------------------------------------------------------------------

    def note_activity(self) -> None:
        """Something happened here (an event taken or published, the doorbell): the consumers stay awake."""
        self._awake_until = time.monotonic() + self.rest_after

    def resting(self) -> bool:
        """Whether this process's event consumers rest (see ``kafka.rest_after_seconds``)."""
        return self.rest_after > 0 and time.monotonic() >= self._awake_until

    def on_doorbell(self, listener: Callable[[str], None]) -> None:
        """Call ``listener`` with the ring's reason (``DOORBELL_RECORDS``, or empty) when the doorbell wakes this
        process from its rest, its own ring included: the sign that work is coming after a quiet spell (e.g.
        training wakes Ray)."""
        self._woken_by_doorbell.append(listener)

    def ring_doorbell(self, why: str = "") -> None:
        """Wake every process's resting consumers (their pipeline followers hear it): this process is about to
        publish, maybe after a quiet spell (``why``: ``DOORBELL_RECORDS`` when stream records arrived). Rung at most
        once per half ``rest_after``; nothing waits for it and a lost ring costs only time (a resting consumer still
        looks every ``kafka.rest_look_seconds``)."""
        if self.rest_after <= 0:
            return
        if self.resting():  # the ringer wakes from its own rest too (its follower will not hear a ring it rang)
            self.note_activity()
            self._woken(why.encode())
        now = time.monotonic()
        if now - self._doorbell_rung < self.rest_after / 2:
            return
        self._doorbell_rung = now
        try:
            self._produce(BUS_DOORBELL_TOPIC, key=self.producer_name.encode(), value=why.encode()).poll(0)
        except (KafkaException, BufferError) as exc:
            log.debug("doorbell not rung: %s", exc)

    def _woken(self, why: bytes) -> None:
        reason = why.decode("utf-8", errors="replace")
        for listener in self._woken_by_doorbell:
            try:
                listener(reason)
            except Exception:  # a listener's failure must not stop the follower
                log.exception("doorbell listener %r failed", listener)

    # --- producing ---------------------------------------------------------------------------------------

    @property
    def producer(self) -> Producer:
        with self._producer_lock:
            if self._producer is not None and self._producer_fatal is not None:
                log.error("producer: %s; making a new producer", self._producer_fatal)
                with contextlib.suppress(Exception):
                    self._producer.purge()  # what it still holds was never acknowledged: its callers were told
                self._producer = None
                self.producer_resets += 1
                CLIENT_RESETS.labels("producer").inc()
            if self._producer is None:
                self._producer_fatal = None
                self._producer = Producer(
                    self.settings.kafka_config(
                        **{
                            "enable.idempotence": True,
                            "linger.ms": 5,
                            "acks": "all",
                            "error_cb": self._on_producer_error,
                        }
                    )
                )
            return self._producer

    def connect_producer(self, timeout: float = 5.0) -> None:
        """Make the producer and connect it to the broker now. A new producer's first publish waits for its
        connection and producer id (0.5 s on the embedded broker), on the path of every cascade that passes
        through this service; at start nobody waits. A broker not answering yet: the first publish connects."""
        try:
            self.producer.list_topics(timeout=timeout)
        except KafkaException as exc:
            log.info("producer not connected at start (%s): the first publish connects", exc)

    def _on_producer_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._producer_fatal = str(err)
        else:
            log.debug("producer: %s", err)

    def _produce(self, topic: str, **kwargs: Any) -> Producer:
        """``produce`` on the producer; a fatal error (raised at once, or reported before) makes a new producer and
        the message is given to it."""
        producer = self.producer
        try:
            producer.produce(topic, **kwargs)
        except KafkaException as exc:
            producer = self._renewed_after(exc)
            producer.produce(topic, **kwargs)
        return producer

    def _renewed_after(self, exc: KafkaException) -> Producer:
        """A new producer after ``produce`` raised a fatal error (an idempotent producer cannot go on after one);
        any other error is raised again."""
        error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if error is None or not error.fatal():
            raise exc
        self._producer_fatal = str(error)
        return self.producer

    def _delivery_failed(self, err: KafkaError, event_type: str) -> None:
        """Count an event the broker did not take; a producer stuck for good (fatal, or a message timed out: e.g. a
        broker that came back empty) is replaced at its next use."""
        if err.fatal() or err.code() == KafkaError._MSG_TIMED_OUT:
            self._producer_fatal = str(err)
        PUBLISH_FAILURES.labels(event_type).inc()

    def register_event_schemas(self) -> None:
        """Register every event schema now, so that publishing never waits on the registry later (a publish
        made inside a database transaction must not depend on another service that writes the same database)."""
        for topic in EVENT_TOPICS:
            self.codec.register(topic.subject, event_schema(topic.event_type))

    def writer(self, topic: Topic) -> RecordWriter:
        """The encoder of ``topic``'s event type, registered and parsed once: publishing many events stays cheap."""
        writer = self._writers.get(topic.event_type)
        if writer is None:
            writer = self._writers[topic.event_type] = self.codec.writer(topic.subject, event_schema(topic.event_type))
        return writer

    def encode(self, event: Event[Payload]) -> bytes:
        return self.writer(event.topic).encode(event.to_avro())

    def produce_encoded(self, topic: Topic, key: bytes, values: Sequence[bytes], start: int = 0) -> int:
        """Hand events of ``topic`` already encoded (``writer(topic).batch``: root events, e.g. the rows of one
        answered request, all with message key ``key``) to the producer, from ``values[start]`` on, without waiting
        or polling. Returns how far it got: ``len(values)``, or the index of the first event the producer's queue
        had no room for (poll, then call again from there). Their delivery reports count them as ``publish``'s do,
        with one report handler for the batch. Only for topics the event log does not copy (``in_event_log``)."""
        if topic.in_event_log:
            raise ValueError(f"{topic.name} is copied to the event log: publish its events with publish()")
        reports = _BatchReports(self, topic.event_type, len(values) - start)
        producer = self.producer
        name = topic.name
        index = start
        while index < len(values):
            try:
                producer.produce(name, values[index], key, on_delivery=reports)
            except BufferError:
                break
            except KafkaException as exc:
                producer = self._renewed_after(exc)  # a new producer takes the rest
                continue
            index += 1
        reports.expect(index - start)
        return index

    def publish(self, event: Event[Payload], *, wait: bool = True, poll: bool = True) -> None:
        """Send ``event`` to its topic. With ``wait`` the call returns once the broker has it. Without ``wait`` it
        serves the delivery reports due (``producer.poll(0)``), unless ``poll`` is false: a caller publishing many
        events polls once for all of them."""
        value = self.encode(event)
        errors: list[str] = []
        self.ring_doorbell()
        self.note_activity()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(str(err))
                self._delivery_failed(err, event.type)
                log.error("event %s (%s) was not delivered: %s", event.id, event.type, err)
            else:
                published, started, stepped = _delivered_counters(event.type)
                published.inc()
                (stepped if event.envelope.caused_by else started).inc()
                if event.topic.in_event_log:
                    self.event_log.submit(event)

        producer = self._produce(event.topic.name, key=event.key.encode(), value=value, on_delivery=on_delivery)
        if wait:
            timeout = self.settings.kafka.publish_timeout_seconds
            undelivered = producer.flush(timeout)
            if errors:
                raise DriftloopError(f"publishing {event.type} failed: {errors[0]}")
            if undelivered:
                # Never acknowledged: not "published". An idempotent producer whose broker came back empty can retry
                # for ever; the next publish gets a new producer (the caller repeats with the same event id).
                self._producer_fatal = f"{undelivered} message(s) not acknowledged within {timeout:g} s"
                PUBLISH_FAILURES.labels(event.type).inc()
                raise DriftloopError(
                    f"publishing {event.type} failed: the broker did not acknowledge it within {timeout:g} s"
                )
        elif poll:
            producer.poll(0)

    def publish_raw(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self._produce(topic, key=key, value=value).poll(0)

    def flush(self) -> None:
        if self._producer is not None:
            self._producer.flush(30)
        self.event_log.flush()

    # --- consuming ---------------------------------------------------------------------------------------

    def consumer_config(
        self, group: str, *, prompt: bool = False, fetch_wait_ms: int | None = None, **extra: Any
    ) -> dict[str, Any]:
        """A consumer of ``group``. ``prompt``: its events start the next step of a cascade, so the broker may hold
        an empty fetch only ``kafka.prompt_fetch_wait_ms`` (see there). ``fetch_wait_ms``: how long instead (a
        consumer whose events may come late, e.g. the pipeline follower's ``kafka.follower_fetch_wait_ms``)."""
        return self.settings.kafka_config(
            **{
                "group.id": group,
                "enable.auto.commit": False,
                # The embedded broker's queried high watermark is wrong: start from committed offsets/earliest.
                "auto.offset.reset": "earliest",
                "session.timeout.ms": self.settings.kafka.session_timeout_ms,
                "heartbeat.interval.ms": heartbeat_interval_ms(self.settings),
                "partition.assignment.strategy": "range,roundrobin",
                # How long the broker may hold an empty fetch (see the settings: on Tansu, also how late a record
                # may arrive). librdkafka's 500 ms made the idle stack's dozen consumers cost the embedded broker 2%
                # of a core; at 2 s, 0.65%. Consumers on a cascade's path (``prompt``) wait less: at 2 s a record
                # waited 0.37 s on average on Tansu, at 500 ms 0.08 s. close() does not wait for it. (Tansu reads
                # every topic of a held fetch again at 0, W/2, 3W/4, ... and every 125 ms in the last 250: about 8
                # times a second at 500 ms, 3 at 2 s, 0.8 at 10 s; each topic read costs it ~0.2 ms of CPU.)
                "fetch.wait.max.ms": self._fetch_wait_ms(prompt, fetch_wait_ms),
                **extra,
            }
        )

    def _fetch_wait_ms(self, prompt: bool, fetch_wait_ms: int | None) -> int:
        if fetch_wait_ms is not None:
            return fetch_wait_ms
        kafka = self.settings.kafka
        return kafka.prompt_fetch_wait_ms if prompt else kafka.fetch_wait_max_ms

    def already_processed(self, group: str, event_id: str) -> bool:
        with self.Session() as session:
            return session.get(ProcessedEvent, (group, event_id)) is not None

    def mark_processed(self, group: str, event_id: str) -> None:
        with self.Session.begin() as session:
            if session.get(ProcessedEvent, (group, event_id)) is None:
                session.add(ProcessedEvent(consumer=group, event_id=event_id))

    def purge_processed(self, consumers: Iterable[str] | None = None) -> int:
        """``purge_processed_events`` with this deployment's settings."""
        return purge_processed_events(
            self.engine,
            retention_days=self.settings.kafka.processed_events_retention_days,
            batch_rows=self.settings.database.purge_batch_rows,
            consumers=consumers,
        )

    def run_consumer(
        self,
        group: str,
        handlers: dict[Topic, EventHandler],
        *,
        poll_timeout: float = 0.5,
        status: ConsumerStatus | None = None,
        broadcast: bool = False,
        prompt: bool = False,
        fetch_wait_ms: int | None = None,
        doorbell: bool = False,
    ) -> None:
        """Consume until ``stop_event`` is set. Each event is handled once per group; the offset is committed
        after the handler. A handler that raises is logged and its event is not marked processed (it is
        retried after a restart); the loop goes on with the next message. ``status``: kept by the caller and not
        listed in ``consumers`` (the pipeline catalog's follower, which every service has besides its own).
        ``prompt``, ``fetch_wait_ms``: see ``consumer_config``.

        While the process rests (``resting``, ``kafka.rest_after_seconds``) the consumer pauses its partitions and
        looks once every ``kafka.rest_look_seconds`` (``ConsumerRest``). ``doorbell``: it never rests and also
        hears the bus's doorbell (the pipeline follower: one per process), which wakes the process.

        ``broadcast``: for a group of one process that reads its topics whole (a fresh group per process: the
        pipeline catalog's follower, serving's promotions): the consumer assigns itself every partition from the
        beginning instead of joining the group, so there is no join wait, no rebalance and no heartbeat (a
        group member heartbeats every ``heartbeat_interval_ms``: at rest, most of what the broker answered). It
        commits nothing (each life reads from the beginning, and what it handled before is skipped by event id),
        and a life ends when the broker was unreachable (it may have come back empty, which an assigned consumer
        is not told).

        The consumer heals (``keep_consuming``, ``GroupMembership``): a commit refused because the group moved on
        (lost membership, a rebalance) is logged and the event comes again to whoever owns its partition (handled
        once, by event id); a consumer that fails otherwise (a fatal error, a broker that came back empty) is
        closed and a new one joins after a pause, its topics made again. While it is down, ``assigned`` is false:
        the service is not ready."""
        topics = [t.name for t in handlers]
        by_name = {t.name: (h, payload_type(t.event_type)) for t, h in handlers.items()}
        if status is None:
            status = ConsumerStatus(group=group, topics=topics)
            self.consumers.append(status)
        rests = not doorbell
        if doorbell and self.rest_after > 0:
            topics = [*topics, BUS_DOORBELL_TOPIC]
        keep_consuming(
            status,
            lambda: self._consume(
                group, topics, by_name, status, poll_timeout, broadcast, prompt, fetch_wait_ms, rests
            ),
            self.stop_event,
        )

    def _consume(
        self,
        group: str,
        topics: list[str],
        by_name: dict[str, tuple[EventHandler, type[Payload]]],
        status: ConsumerStatus,
        poll_timeout: float,
        broadcast: bool = False,
        prompt: bool = False,
        fetch_wait_ms: int | None = None,
        rests: bool = True,
    ) -> None:
        ensure_topics(self.settings, topics)
        lag = ConsumerLag(group)
        membership = GroupMembership(status, lag, ensure=lambda: ensure_topics(self.settings, topics))
        if broadcast:
            consumer = Consumer(
                self.consumer_config(
                    group, prompt=prompt, fetch_wait_ms=fetch_wait_ms, error_cb=membership.on_client_error
                )
            )
            membership.assign_all(consumer, topics)
        else:
            consumer = Consumer(self.consumer_config(group, prompt=prompt, fetch_wait_ms=fetch_wait_ms))
            membership.subscribe(consumer, topics)
        rest = None
        if rests and self.rest_after > 0:
            rest = ConsumerRest(self, consumer, status, self._fetch_wait_ms(prompt, fetch_wait_ms))
        next_purge = time.monotonic()
        try:
            while not self.stop_event.is_set():
                if rest is not None:
                    rest.step()
                msg = consumer.poll(poll_timeout)
                membership.check()
                lag.update(consumer)
                if time.monotonic() >= next_purge:
                    # Each group purges its own ids, between two events (batched: short transactions).
                    next_purge = time.monotonic() + self.settings.database.purge_interval_seconds
                    try:
                        self.purge_processed([group])
                    except Exception:  # retention must never stop a consumer
                        log.exception("consumer %s: purge of processed events failed", group)
                if msg is None or not membership.usable(msg):
                    continue
                if msg.topic() == BUS_DOORBELL_TOPIC:  # heard: the process is awake; nothing to handle or commit
                    woken = self.resting()
                    self.note_activity()
                    lag.committed(msg.topic(), msg.partition(), msg.offset() + 1)
                    if woken:
                        self._woken(msg.value() or b"")
                    continue
                self.note_activity()
                handler, payload_class = by_name[msg.topic()]
                self._handle(group, msg, handler, payload_class, status)
                if broadcast:  # nothing to commit: the next life reads from the beginning
                    lag.committed(msg.topic(), msg.partition(), msg.offset() + 1)
                    continue
                try:
                    consumer.commit(message=msg, asynchronous=False)
                except KafkaException as exc:
                    # The group moved on (this member lost its membership, or a rebalance is under way): the event
                    # is handled already and marked processed; its new owner skips it. Rejoin and go on.
                    if not commit_refused(status, exc, f"{msg.topic()}/{msg.partition()}/{msg.offset()}"):
                        raise
                    continue
                lag.committed(msg.topic(), msg.partition(), msg.offset() + 1)
        finally:
            status.assigned = False
            with contextlib.suppress(Exception):
                consumer.close()

    def _handle(
        self, group: str, msg: Message, handler: EventHandler, payload_class: type[Payload], status: ConsumerStatus
    ) -> None:
        try:
            _, record = self.codec.decode(msg.value())
            # Into the payload class of the topic's event type (fields a newer writer added are left out).
            event: Event[Payload] = Event.from_avro(record, payload_class)
        except (WireFormatError, KeyError, ValueError, TypeError) as exc:
            EVENTS_CONSUMED.labels(group, msg.topic(), "", "undecodable").inc()
            status.failed += 1
            status.last_error = f"undecodable message at {msg.topic()}/{msg.partition()}/{msg.offset()}: {exc}"
            log.error(status.last_error)
            return
        if self.already_processed(group, event.id):
            EVENTS_CONSUMED.labels(group, msg.topic(), event.type, "duplicate").inc()
            log.info("consumer %s: event %s already handled, skipping redelivery", group, event.id)
            return
        started = time.perf_counter()
        try:
            handler(event)
        except Exception as exc:
            EVENTS_CONSUMED.labels(group, msg.topic(), event.type, "failed").inc()
            status.failed += 1
            status.last_error = f"{event.type} {event.id}: {exc!r}"
            log.exception("consumer %s: handler failed on %s %s", group, event.type, event.id)
            return
        EVENT_HANDLE_SECONDS.labels(group, event.type).observe(time.perf_counter() - started)
        self.mark_processed(group, event.id)
        EVENTS_CONSUMED.labels(group, msg.topic(), event.type, "handled").inc()
        status.handled += 1

    def close(self) -> None:
        self.stop_event.set()
        with self._producer_lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(10)
        # The producer is destroyed with its last reference, here: one kept (this bus outlives its process's
        # broker in tests and tools) reconnects to the gone broker every second for as long as the process runs.
        del producer
        self.event_log.close()


class ConsumerRest:
    """Pauses a consumer's partitions while its process rests (``EventBus.resting``) and lets it look, with one held
    fetch, once every ``kafka.rest_look_seconds``; resumes them when the process wakes (an event taken or published,
    the doorbell). Paused partitions are not fetched, so the embedded broker does not re-read their topics several
    times a second; a rebalance's new partitions come unpaused and are paused again. Positions are kept: nothing is
    skipped or taken twice."""

    def __init__(self, bus: EventBus, consumer: Consumer, status: ConsumerStatus, fetch_wait_ms: int) -> None:
        self.bus = bus
        self.consumer = consumer
        self.status = status
        self.look_every = bus.settings.kafka.rest_look_seconds
        self.look_for = fetch_wait_ms / 1000 + 0.25  # one held fetch and its answer
        self.paused: set[tuple[str, int]] = set()
        self.next_look = 0.0
        self.looking_until = 0.0

    def step(self) -> None:
        """Called before each poll."""
        if not self.bus.resting():
            if self.paused:
                self._resume()
            self.status.extra.pop("resting", None)
            self.looking_until = 0.0
            return
        self.status.extra["resting"] = True
        now = time.monotonic()
        if self.paused:
            if now >= self.next_look:
                self._resume()
                self.looking_until = now + self.look_for
            elif self._assigned() != self.paused:  # a rebalance: its new partitions come unpaused
                self._pause()
        elif now >= self.looking_until:
            self._pause()
            self.next_look = now + self.look_every

    def _assigned(self) -> set[tuple[str, int]]:
        try:
            return {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        except KafkaException:
            return set()

    def _pause(self) -> None:
        assigned = self._assigned()
        with contextlib.suppress(KafkaException):
            self.consumer.pause([TopicPartition(t, p) for t, p in assigned])
        self.paused = assigned

    def _resume(self) -> None:
        with contextlib.suppress(KafkaException):
            self.consumer.resume([TopicPartition(t, p) for t, p in self.paused])
        self.paused = set()


# Commit errors that mean "the group moved on without this member": it rejoins, nothing is lost.
UNCOMMITTABLE = frozenset(
    {
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError._ASSIGNMENT_LOST,
        KafkaError._NO_OFFSET,
    }
)

# --- consumers that heal -------------------------------------------------------------------------------------
# Every group consumer of the platform (the bus's event consumers, ingestion's stream intake) heals the same way:
# ``keep_consuming`` runs one consumer's life after another, ``GroupMembership`` follows its membership, and
# ``usable``/``commit_refused`` tell what the consumer recovers from by itself from what needs a new consumer.


def keep_consuming(status: ConsumerStatus, one_life: Callable[[], None], stop_event: threading.Event) -> None:
    """Run ``one_life`` (make a consumer, consume until ``stop_event``, close it) until ``stop_event`` is set. A life
    that raises (a fatal error, a broker that came back empty, anything unexpected) is logged and counted in
    ``status``, readiness drops (``assigned`` false, ``last_error`` says why), and a new life starts after a growing
    pause. A life that returns while ``stop_event`` is not set is started again at once."""
    backoff = Backoff(first_delay=CONSUMER_RESTART_BACKOFF[0], max_delay=CONSUMER_RESTART_BACKOFF[1])
    while not stop_event.is_set():
        try:
            one_life()
        except Exception as exc:
            status.assigned = False
            status.last_error = f"consumer failed: {exc!r}"
            status.restarts += 1
            CLIENT_RESETS.labels("consumer").inc()
            delay = backoff.next_delay()
            log.exception("consumer %s failed; joining again in %.1f s", status.group, delay)
            stop_event.wait(delay)


PartitionsCallback = Callable[[Consumer, list[TopicPartition]], None]
ENSURE_INTERVAL_SECONDS = 5.0


class GroupMembership:
    """The rebalance callbacks of a healing group consumer. ``status.assigned`` follows the membership: true from an
    assignment, false once the partitions are lost (session timeout, broker restart; ``last_error`` says so). The
    consumer rejoins by itself (a new consumer would not do better: on the embedded broker a member leaving during
    a rebalance leaves the group stuck), and partitions given back after a loss start from the group's committed
    offsets (the beginning if it committed nothing), not from positions kept from before: after a broker restarted
    empty those lie beyond the new logs, and the records before them would be skipped without a word.

    A broker that came back empty has lost the topics too, and the rejoined consumer gets no partitions of them (nor
    later ones once they exist again). So back after a loss, or told that a subscribed topic is unknown (``usable``),
    ``ensure`` makes the topics again; if it had to, the consumer is not taken as assigned and ``check`` ends its
    life (after the rebalance: leaving during one would leave the group stuck on the embedded broker), so that a
    new consumer joins with the topics there.

    The owner's own hooks (what it keeps per partition) run inside: ``on_assign`` after the offsets are set,
    ``on_revoke`` and ``on_lost`` (default: ``on_revoke``) before ``assigned`` changes."""

    def __init__(
        self,
        status: ConsumerStatus,
        lag: ConsumerLag,
        *,
        ensure: Callable[[], list[str]] | None = None,
        on_assign: PartitionsCallback | None = None,
        on_revoke: PartitionsCallback | None = None,
        on_lost: PartitionsCallback | None = None,
    ) -> None:
        self.status = status
        self.lag = lag
        self.ensure = ensure
        self._on_assign_hook = on_assign
        self._on_revoke_hook = on_revoke
        self._on_lost_hook = on_lost or on_revoke
        self._lost = False
        self._ensured_at = -ENSURE_INTERVAL_SECONDS
        self.renew = False
        self.renew_reason = "its topics were made again"
        self.topics: list[str] = []

    def subscribe(self, consumer: Consumer, topics: list[str]) -> None:
        self.topics = list(topics)
        consumer.subscribe(topics, on_assign=self.on_assign, on_revoke=self.on_revoke, on_lost=self.on_lost)

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        group = self.status.group
        made_again = self._lost and self._ensure()
        if self._lost:
            self._lost = False
            try:
                committed = {(p.topic, p.partition): p.offset for p in consumer.committed(partitions, timeout=10)}
            except KafkaException:
                committed = {}
            for p in partitions:
                offset = committed.get((p.topic, p.partition), OFFSET_INVALID)
                p.offset = offset if offset >= 0 else OFFSET_BEGINNING
            log.warning("consumer %s rejoined after losing its partitions: from the committed offsets", group)
        if self._on_assign_hook is not None:
            self._on_assign_hook(consumer, partitions)
        self.status.assigned = not made_again
        self.lag.assigned(partitions)
        log.info("consumer %s assigned %d partitions", group, len(partitions))

    def assign_all(self, consumer: Consumer, topics: list[str]) -> None:
        """Without joining the group: assign every partition of ``topics`` from the beginning (``broadcast``
        consumers of ``EventBus.run_consumer``)."""
        self.topics = list(topics)
        metadata = consumer.list_topics(timeout=10)
        partitions = [
            TopicPartition(topic, partition, OFFSET_BEGINNING)
            for topic in topics
            for partition in sorted(getattr(metadata.topics.get(topic), "partitions", None) or {})
        ]
        if not partitions:
            raise DriftloopError(f"consumer {self.status.group}: topics {topics} have no partitions on the broker")
        consumer.assign(partitions)
        for p in partitions:
            self.lag.committed(p.topic, p.partition, 0)  # the position a broadcast consumer starts from
        self.lag.assigned(partitions)
        self.status.assigned = True
        log.info("consumer %s assigned itself %d partitions", self.status.group, len(partitions))

    def on_client_error(self, error: KafkaError) -> None:
        """librdkafka's error callback of a ``broadcast`` consumer: once every broker was unreachable, the consumer
        is renewed (``check``), since the broker may have come back empty (an assigned consumer is not told; a
        group member would lose its partitions). Other errors are logged; librdkafka recovers from them."""
        if error.code() == KafkaError._ALL_BROKERS_DOWN or error.fatal():
            self.renew_reason = "the broker was unreachable"
            self.renew = True
            self.status.assigned = False
            self.status.last_error = f"the broker was unreachable ({error.str()}); reading again from the beginning"
        log.warning("consumer %s: %s", self.status.group, error.str())

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._on_revoke_hook is not None:
            self._on_revoke_hook(consumer, partitions)
        self.lag.revoked(partitions)

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("consumer %s lost its %d partitions; rejoining", self.status.group, len(partitions))
        self.status.assigned = False
        self.status.last_error = f"lost its {len(partitions)} partitions (session timeout or broker restart); rejoining"
        self._lost = True
        if self._on_lost_hook is not None:
            self._on_lost_hook(consumer, partitions)
        self.lag.revoked(partitions)

    def usable(self, msg: Message) -> bool:
        """Whether ``msg`` is a record. A fatal consumer error raises (the consumer is made again by
        ``keep_consuming``); a subscribed topic unknown to the broker is made again (``ensure``); other errors are
        logged (end of partition: silently)."""
        error = msg.error()
        if error is None:
            return True
        if error.fatal():
            raise KafkaException(error)
        if error.code() == KafkaError._PARTITION_EOF:
            return False
        log.warning("consumer %s: %s", self.status.group, error)
        unknown_topic = error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC)
        if unknown_topic and time.monotonic() - self._ensured_at >= ENSURE_INTERVAL_SECONDS:
            self._ensured_at = time.monotonic()
            self._ensure()
        return False

    def _ensure(self) -> bool:
        """Make the subscribed topics that are gone; True when some were (then ``check`` renews the consumer)."""
        if self.ensure is None:
            return False
        try:
            made = [t for t in self.ensure() if t in self.topics]
        except Exception as exc:
            log.warning("consumer %s: could not check its topics (%r); trying later", self.status.group, exc)
            return False
        if made:
            self.renew = True
            self.status.assigned = False
            self.status.last_error = f"topics {made} were gone (a broker that came back empty): made again; rejoining"
            log.warning("consumer %s: %s", self.status.group, self.status.last_error)
        return bool(made)

    def check(self) -> None:
        """Raise (so that ``keep_consuming`` makes a new consumer) when this one's subscription is stale."""
        if self.renew:
            raise DriftloopError(f"consumer {self.status.group}: {self.renew_reason}; a new consumer joins")


def commit_refused(status: ConsumerStatus, exc: KafkaException, where: str) -> bool:
    """Whether a failed commit only means the group moved on without this member (``UNCOMMITTABLE``): then it is
    logged, noted in ``status``, and the consumer goes on (it rejoins; the records come again to whoever owns their
    partitions). False: the caller re-raises (``keep_consuming`` makes a new consumer)."""
    error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    if error is None or error.fatal() or error.code() not in UNCOMMITTABLE:
        return False
    status.last_error = f"commit refused: {error.str()}"
    log.warning("consumer %s: commit at %s refused (%s); rejoining", status.group, where, error.str())
    return True


class ConsumerLag:
    """Per-partition lag of one consumer group, for the ``driftloop_consumer_lag`` gauge.

    The high watermark is librdkafka's cached one, which is updated from the metadata of fetched messages (right
    on Tansu, unlike a watermark query); the committed offset is the one this loop commits after each handler.
    """

    def __init__(self, group: str, interval: float = 1.0) -> None:
        self.group = group
        self.interval = interval
        self._committed: dict[tuple[str, int], int] = {}
        self._high: dict[tuple[str, int], int] = {}  # last high watermark seen per partition
        self._partitions: set[tuple[str, int]] = set()
        self._next_update = 0.0
        self._lock = threading.Lock()

    def assigned(self, partitions: list[TopicPartition]) -> None:
        with self._lock:
            self._partitions.update((p.topic, p.partition) for p in partitions)
            self._next_update = 0.0

    def revoked(self, partitions: list[TopicPartition]) -> None:
        with self._lock:
            for p in partitions:
                key = (p.topic, p.partition)
                self._partitions.discard(key)
                self._committed.pop(key, None)
                self._high.pop(key, None)
                for gauge in (CONSUMER_LAG, CONSUMER_COMMITTED_OFFSET):
                    with contextlib.suppress(KeyError):
                        gauge.remove(self.group, p.topic, str(p.partition))

    def committed(self, topic: str, partition: int, offset: int) -> None:
        with self._lock:
            self._committed[(topic, partition)] = offset
            high = self._high.get((topic, partition))
        # Right away, so that the gauge shows a caught-up consumer without waiting for the next refresh.
        CONSUMER_COMMITTED_OFFSET.labels(self.group, topic, str(partition)).set(offset)
        if high is not None:
            CONSUMER_LAG.labels(self.group, topic, str(partition)).set(max(0, high - offset))

    def update(self, consumer: Consumer, now: float | None = None) -> None:
        """Refresh the gauges at most once per ``interval`` seconds (cheap: no broker round trip except, once
        per newly assigned partition, asking for the group's committed offset)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            # Until every partition's watermark is known, refresh on each poll (local calls only): else the first
            # message's lag could wait a whole interval, or forever behind a handler that blocks.
            all_known = self._partitions <= self._high.keys()
        if all_known and now < self._next_update:
            return
        self._next_update = now + self.interval
        with self._lock:
            partitions = sorted(self._partitions)
            unknown = [TopicPartition(t, p) for t, p in partitions if (t, p) not in self._committed]
        if unknown:
            try:
                for tp in consumer.committed(unknown, timeout=2.0):
                    # Nothing committed yet: the group starts from the earliest offset (0 on a fresh topic).
                    offset = tp.offset if tp.offset >= 0 else 0
                    with self._lock:
                        self._committed.setdefault((tp.topic, tp.partition), offset)
            except KafkaException:
                log.debug("consumer %s: committed offsets not available yet", self.group, exc_info=True)
        for topic, partition in partitions:
            with self._lock:
                committed = self._committed.get((topic, partition))
            if committed is None:
                continue
            try:
                _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except KafkaException:
                continue
            labels = (self.group, topic, str(partition))
            CONSUMER_COMMITTED_OFFSET.labels(*labels).set(committed)
            if high is None or high == OFFSET_INVALID or high < 0:
                continue  # nothing fetched from this partition yet
            with self._lock:
                self._high[(topic, partition)] = high
            CONSUMER_LAG.labels(*labels).set(max(0, high - committed))


def ensure_event_topics(settings: Settings) -> None:
    ensure_topics(settings, [t.name for t in EVENT_TOPICS])
    ensure_topics(settings, [BUS_DOORBELL_TOPIC], partitions=1)
