"""Dead letters stored while the broker is down (their RecordRejected, published without waiting, never arrives)
are announced by the ingestion outbox, drained continuously, once the broker is back: each event once on the
topic, with the id stored with its dead letter; on a real broker (its own Tansu, restarted)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from driftloop.clients.db import migrate
from driftloop.clients.db.models import DeadLetter
from driftloop.contracts.settings import Settings
from driftloop.contracts.topics import RECORD_REJECTED
from driftloop.ops.broker import EmbeddedBroker
from driftloop.ops.procs import free_port, wait_until
from driftloop.runtime.bus import EventBus, ensure_event_topics
from driftloop.services.ingestion.landing import Lander
from driftloop.services.ingestion.outbox import DeadLetterOutbox
from driftloop.services.ingestion.validation import Rejection

pytestmark = pytest.mark.integration

# The producer gives a message up after this; the outbox waits a little longer before publishing it again.
MESSAGE_TIMEOUT_MS = 1000
IN_FLIGHT = timedelta(milliseconds=MESSAGE_TIMEOUT_MS) + timedelta(seconds=2)


def rejected_on_topic(bus: EventBus) -> Counter[str]:
    """Event ids of the RecordRejected events on the topic, with how often each is there (read until idle)."""
    settings = bus.settings
    consumer = Consumer(settings.kafka_config(**{"group.id": "count", "enable.auto.commit": False}))
    partitions = range(settings.kafka.partitions)
    consumer.assign([TopicPartition(RECORD_REJECTED.name, p, OFFSET_BEGINNING) for p in partitions])
    seen: Counter[str] = Counter()
    idle_since = time.monotonic()
    try:
        while time.monotonic() - idle_since < 2:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            idle_since = time.monotonic()
            seen[bus.codec.decode(msg.value())[1]["envelope"]["event_id"]] += 1
    finally:
        consumer.close()
    return seen


def test_dead_letters_stored_while_the_broker_is_down_are_announced_once_when_it_is_back(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str
) -> None:
    broker = EmbeddedBroker(port=free_port(), log_path=tmp_path / "tansu.log")  # its own: stopped below
    broker.start()
    settings = make_settings(
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "session_timeout_ms": 2000,
            "publish_timeout_seconds": 2,
            "client_config": {"message.timeout.ms": str(MESSAGE_TIMEOUT_MS)},
        }
    )
    migrate(settings.database_url)
    ensure_event_topics(settings)
    bus = EventBus(settings, producer_name="ingestion")
    lander = Lander(bus, store=None)  # type: ignore[arg-type]  # dead letters only: no object store
    outbox = DeadLetterOutbox(bus.Session, bus, in_flight=IN_FLIGHT)
    outbox.interval = 0.5
    stream = f"dlq-{unique}"

    def reject(prefix: str, count: int) -> None:
        lander.dead_letters(
            stream,
            [(Rejection("out_of_range", "amount", f"amount {i}"), f"http:{prefix}/{i}", b"{}") for i in range(count)],
        )

    def unannounced() -> list[str]:
        with bus.Session() as session:
            return list(session.scalars(sa.select(DeadLetter.event_id).where(DeadLetter.announced_at.is_(None))))

    stop = threading.Event()
    drain = threading.Thread(target=outbox.drain_loop, args=(stop,), daemon=True)
    try:
        reject("before", 2)
        bus.flush()  # acknowledged: the outbox only marks them
        drain.start()
        wait_until(lambda: not unannounced(), 30, "the delivered dead letters marked announced")

        broker.stop()
        reject("down", 3)  # stored; their events cannot be delivered
        lost = unannounced()
        assert len(lost) == 3
        wait_until(lambda: outbox.last_error is not None, 30, "a drain that found the broker down")
        assert sorted(unannounced()) == sorted(lost)  # nothing is marked without the broker's acknowledgement

        broker.start()  # same port, nothing kept
        ensure_event_topics(settings)
        wait_until(lambda: not unannounced(), 60, "the dead letters announced once the broker is back")
        stop.set()
        drain.join(timeout=30)

        on_topic = rejected_on_topic(bus)
        assert {event_id: on_topic[event_id] for event_id in lost} == dict.fromkeys(lost, 1)
        assert set(on_topic.values()) == {1}  # nothing published twice
    finally:
        stop.set()
        if drain.is_alive():
            drain.join(timeout=30)
        bus.close()
        broker.stop()
