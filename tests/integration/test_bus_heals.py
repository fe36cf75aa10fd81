"""Clients that heal, on a real broker restarted empty mid-stream (its own Tansu, in memory): the bus's producer and
a bus consumer (a group member, or a broadcast one) go on by themselves — every event published after the restart
is handled, once — and a producer that hit a fatal error is made again."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from driftloop.clients.db import migrate
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import ExternalTrigger
from driftloop.contracts.topics import EXTERNAL_TRIGGER
from driftloop.errors import DriftloopError
from driftloop.ops.broker import EmbeddedBroker
from driftloop.ops.procs import free_port, wait_until
from driftloop.runtime.bus import EventBus, ensure_event_topics

pytestmark = pytest.mark.integration


# broadcast: a consumer that assigns itself every partition instead of joining its group (the pipeline follower's
# and serving's); it is not told of a lost assignment, so it must notice the broker's restart by itself.
@pytest.mark.parametrize("broadcast", [False, True], ids=["group", "broadcast"])
def test_producer_and_consumer_carry_on_after_the_broker_restarted_empty(
    make_settings, tmp_path: Path, unique: str, broadcast: bool
) -> None:  # type: ignore[no-untyped-def]
    broker = EmbeddedBroker(port=free_port(), log_path=tmp_path / "tansu.log")
    broker.start()
    settings = make_settings(
        kafka={"bootstrap_servers": broker.bootstrap_servers, "session_timeout_ms": 2000, "publish_timeout_seconds": 5}
    )
    migrate(settings.database_url)
    ensure_event_topics(settings)
    bus = EventBus(settings, producer_name="test")
    model = f"heal-{unique}"
    handled: list[str] = []
    thread = threading.Thread(
        target=bus.run_consumer,
        args=(f"g-{unique}", {EXTERNAL_TRIGGER: lambda e: handled.append(e.payload.reason)}),
        kwargs={"broadcast": broadcast},
        daemon=True,
    )

    def publish(reason: str) -> Event:
        event = new_event(ExternalTrigger(model=model, reason=reason, details_json="{}"), producer="t")
        bus.publish(event)
        return event

    try:
        thread.start()
        publish("before")
        wait_until(lambda: handled == ["before"], 60, "the event before the restart")
        (status,) = bus.consumers

        broker.stop()
        broker.start()  # same port, nothing kept
        ensure_event_topics(settings)
        deadline = time.monotonic() + 90
        attempt = 0
        while True:  # a publish succeeds only once the broker acknowledged it; a refused one raised
            try:
                publish(f"after-{attempt}")
                break
            except DriftloopError:
                assert time.monotonic() < deadline, "the producer never delivered again"
                attempt += 1
        publish("after-more")
        wait_until(lambda: "after-more" in handled, 120, "the events after the restart")
        # Every event the producer was told was delivered is handled, once (those it was refused were not sent).
        delivered_after = [r for r in handled if r.startswith("after-")]
        assert handled.count("before") == 1 and len(delivered_after) == len(set(delivered_after)) == 2
        assert bus.producer_resets >= 1  # the producer stuck on the broker's old life was replaced
        wait_until(lambda: status.assigned, 30, "the consumer assigned again")
    finally:
        bus.stop_event.set()
        thread.join(timeout=15)
        bus.close()
        broker.stop()


def test_a_fatal_producer_error_makes_a_new_producer(make_settings, unique: str) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    migrate(settings.database_url)
    ensure_event_topics(settings)
    bus = EventBus(settings, producer_name="test")
    try:
        first = bus.producer
        bus._on_producer_error(KafkaError(KafkaError._FENCED, "producer fenced", fatal=True))  # what librdkafka calls
        event = new_event(ExternalTrigger(model=f"fatal-{unique}", reason="x", details_json="{}"), producer="t")
        bus.publish(event)  # through a new producer
        assert bus.producer is not first and bus.producer_resets == 1
        bus._on_producer_error(KafkaError(KafkaError._TRANSPORT, "broker down"))  # not fatal: kept
        assert bus.producer_resets == 1
    finally:
        bus.close()
