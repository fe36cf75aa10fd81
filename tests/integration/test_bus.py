"""The event bus on the real broker and registry: wire format, event log, once-per-group handling, the producer
connected at start."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer

from driftloop.clients.db import migrate
from driftloop.clients.db.models import EventRecord, ProcessedEvent
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import ExternalTrigger
from driftloop.contracts.topics import DOORBELL_RECORDS, EXTERNAL_TRIGGER, PIPELINE_APPLIED
from driftloop.runtime.bus import ConsumerStatus, EventBus, ensure_event_topics

pytestmark = pytest.mark.integration


def _wait(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_publish_consume_record_and_skip_redelivery(make_settings, unique: str) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    migrate(settings.database_url)
    bus = EventBus(settings, producer_name="test")
    ensure_event_topics(settings)

    root = new_event(ExternalTrigger(model=f"m-{unique}", reason="test", details_json="{}"), producer="t")
    bus.publish(root)
    # The same event delivered twice (e.g. a producer retry after a lost ack).
    bus.publish(root)
    other = new_event(ExternalTrigger(model=f"m-{unique}", reason="second", details_json="{}"), producer="t")
    bus.publish(other)

    handled: list[Event] = []
    group = f"g-{unique}"
    thread = threading.Thread(
        target=bus.run_consumer,
        args=(group, {EXTERNAL_TRIGGER: lambda e: handled.append(e) if e.payload.model == f"m-{unique}" else None}),
        daemon=True,
    )
    thread.start()
    _wait(lambda: len([e for e in handled]) >= 2)
    time.sleep(1.0)  # give a (wrong) third delivery the chance to show up
    bus.stop_event.set()
    thread.join(timeout=15)

    assert [e.id for e in handled] == [root.id, other.id]
    assert handled[0].envelope == root.envelope and handled[0].payload == root.payload
    with bus.Session() as s:
        assert s.get(ProcessedEvent, (group, root.id)) is not None
    bus.flush()
    with bus.Session() as s:
        rows = s.scalars(sa.select(EventRecord).where(EventRecord.model == f"m-{unique}")).all()
    assert {r.event_id for r in rows} == {root.id, other.id}
    assert all(r.cascade_id == r.event_id and r.event_type == "ExternalTrigger" for r in rows)
    bus.close()


def test_events_are_in_confluent_wire_format(make_settings, unique: str) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    migrate(settings.database_url)
    bus = EventBus(settings, producer_name="test")
    ensure_event_topics(settings)
    event = new_event(ExternalTrigger(model=f"w-{unique}", reason="wire", details_json="{}"), producer="t")
    bus.publish(event)
    consumer = Consumer(bus.consumer_config(f"raw-{unique}"))
    consumer.subscribe([EXTERNAL_TRIGGER.name])
    found = None
    deadline = time.monotonic() + 30
    while found is None and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error() and msg.key() == f"w-{unique}".encode():
            found = msg
    consumer.close()
    assert found is not None
    value = found.value()
    assert value[0] == 0 and int.from_bytes(value[1:5], "big") > 0
    _, record = bus.codec.decode(value)
    assert record["envelope"]["event_id"] == event.id
    bus.close()


def test_the_producer_connected_at_start_is_the_one_that_publishes(make_settings, unique: str, caplog) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    migrate(settings.database_url)
    ensure_event_topics(settings)
    bus = EventBus(settings, producer_name="test")
    with caplog.at_level("INFO", logger="driftloop.runtime.bus"):
        bus.connect_producer()
    assert "not connected" not in caplog.text
    connected = bus._producer
    assert connected is not None
    bus.publish(new_event(ExternalTrigger(model=f"c-{unique}", reason="start", details_json="{}"), producer="t"))
    assert bus._producer is connected and bus.producer_resets == 0
    bus.close()


def _resting_settings(make_settings, **kafka):  # type: ignore[no-untyped-def]
    return make_settings(kafka={**make_settings().kafka.model_dump(), **kafka})


def _resting_consumer(make_settings, unique: str, prefix: str, bell: bool, **rest: float):  # type: ignore[no-untyped-def]
    """A bus (one process) whose one prompt consumer of ``EXTERNAL_TRIGGER`` keeps the events of its model, once it
    rests: (bus, kept events, model, threads, status). ``bell``: with the process's follower, which never rests and
    hears the doorbell (started first: the doorbells rung before, which it reads at start, wake the process)."""
    settings = _resting_settings(make_settings, **rest)
    migrate(settings.database_url)
    ensure_event_topics(settings)
    bus = EventBus(settings, producer_name="rests")
    handled: list[Event] = []
    model = f"{prefix}-{unique}"

    def keep(event: Event) -> None:
        if event.payload.model == model:
            handled.append(event)

    threads = [
        threading.Thread(
            target=bus.run_consumer,
            args=(f"g-{unique}", {EXTERNAL_TRIGGER: keep}),
            kwargs={"prompt": True},
            daemon=True,
        )
    ]
    if bell:
        follower = ConsumerStatus(group=f"bell-{unique}", topics=[PIPELINE_APPLIED.name])
        threads.append(
            threading.Thread(
                target=bus.run_consumer,
                args=(f"bell-{unique}", {PIPELINE_APPLIED: lambda _e: None}),
                kwargs={"broadcast": True, "fetch_wait_ms": 500, "doorbell": True, "status": follower},
                daemon=True,
            )
        )
    for thread in threads:
        thread.start()
    _wait(lambda: len(bus.consumers) == 1 and bus.consumers[0].assigned)
    status = bus.consumers[0]
    _wait(lambda: status.extra.get("resting") is True)
    return bus, handled, model, threads, status


def _publish_without_ringing(make_settings, model: str) -> tuple[EventBus, Event]:  # type: ignore[no-untyped-def]
    """An event published by a process that does not ring the doorbell (its consumers never rest)."""
    quiet = EventBus(_resting_settings(make_settings, rest_after_seconds=0.0), producer_name="quiet")
    event = new_event(ExternalTrigger(model=model, reason="while resting", details_json="{}"), producer="t")
    quiet.publish(event)
    return quiet, event


def test_a_resting_consumer_fetches_nothing_until_the_doorbell_wakes_it(make_settings, unique: str) -> None:  # type: ignore[no-untyped-def]
    bus, handled, model, threads, status = _resting_consumer(
        make_settings, unique, "rest", True, rest_after_seconds=2.0, rest_look_seconds=120.0
    )
    quiet, event = _publish_without_ringing(make_settings, model)
    time.sleep(4.0)  # awake, a prompt consumer takes it within about 0.5 s
    assert handled == [] and status.extra.get("resting") is True

    woken: list[str] = []
    bus.on_doorbell(woken.append)
    ringer = EventBus(_resting_settings(make_settings, rest_after_seconds=600.0), producer_name="ringer")
    ringer.ring_doorbell(DOORBELL_RECORDS)
    ringer.flush()
    _wait(lambda: [e.id for e in handled] == [event.id], timeout=15)
    assert "resting" not in status.extra
    assert woken == [DOORBELL_RECORDS], "the ring that woke the resting process, with its reason"
    # A second ring within half its rest period is not sent.
    rung = ringer._doorbell_rung
    ringer.ring_doorbell()
    assert ringer._doorbell_rung == rung
    # A ring heard while the process is awake wakes nothing: its listeners are not called.
    other = EventBus(_resting_settings(make_settings, rest_after_seconds=600.0), producer_name="other-ringer")
    other.ring_doorbell(DOORBELL_RECORDS)
    other.flush()
    time.sleep(3.0)
    assert woken == [DOORBELL_RECORDS]

    bus.stop_event.set()
    for thread in threads:
        thread.join(timeout=15)
    for b in (bus, quiet, ringer, other):
        b.close()


def test_a_process_ringing_from_its_own_rest_calls_its_own_listeners(make_settings) -> None:  # type: ignore[no-untyped-def]
    # Ingestion rings when records arrive; its own follower does not hear a ring it rang, yet its own wake (Spark's
    # Python workers started again) depends on it.
    ringer = EventBus(_resting_settings(make_settings, rest_after_seconds=1.0), producer_name="self-ringer")
    woken: list[str] = []
    ringer.on_doorbell(woken.append)
    try:
        ringer.note_activity()
        ringer.ring_doorbell(DOORBELL_RECORDS)  # awake: nothing to wake
        assert woken == []
        time.sleep(1.5)
        assert ringer.resting()
        ringer.ring_doorbell(DOORBELL_RECORDS)
        assert woken == [DOORBELL_RECORDS] and not ringer.resting()
        ringer.ring_doorbell(DOORBELL_RECORDS)  # awake again: once per wake
        assert woken == [DOORBELL_RECORDS]
    finally:
        ringer.close()


def test_a_resting_consumer_still_looks_now_and_then(make_settings, unique: str) -> None:  # type: ignore[no-untyped-def]
    bus, handled, model, threads, _ = _resting_consumer(
        make_settings, unique, "look", False, rest_after_seconds=1.0, rest_look_seconds=3.0
    )
    quiet, event = _publish_without_ringing(make_settings, model)
    _wait(lambda: [e.id for e in handled] == [event.id], timeout=20)  # no doorbell: its next look finds it
    bus.stop_event.set()
    threads[0].join(timeout=15)
    bus.close()
    quiet.close()
