"""Consumer metrics on the real broker: lag from committed offsets vs the watermark seen in fetched messages,
events consumed by outcome, cascade counts of published events."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import REGISTRY

from driftloop.clients.db import migrate
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import ExternalTrigger
from driftloop.contracts.topics import EXTERNAL_TRIGGER
from driftloop.runtime.bus import EventBus, ensure_event_topics

pytestmark = pytest.mark.integration


def _lag(group: str) -> float | None:
    values = [
        s.value
        for metric in REGISTRY.collect()
        if metric.name == "driftloop_consumer_lag"
        for s in metric.samples
        if s.labels.get("group") == group
    ]
    return sum(values) if values else None


def _wait(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_lag_counts_uncommitted_messages_then_drops_to_zero(make_settings, unique: str) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    migrate(settings.database_url)
    bus = EventBus(settings, producer_name="test")
    ensure_event_topics(settings)
    model = f"lag-{unique}"
    started = REGISTRY.get_sample_value("driftloop_cascades_started_total", {"event_type": "ExternalTrigger"}) or 0
    events = [
        new_event(ExternalTrigger(model=model, reason=f"r{i}", details_json="{}"), producer="t") for i in range(5)
    ]
    for event in events:
        bus.publish(event)
    # Root events (no cause) count as started cascades.
    assert REGISTRY.get_sample_value("driftloop_cascades_started_total", {"event_type": "ExternalTrigger"}) == (
        started + 5
    )

    release = threading.Event()
    blocked = threading.Event()
    mine: list[Event] = []

    def handler(event: Event) -> None:
        if event.payload.model != model:
            return
        mine.append(event)
        if len(mine) == 1:
            blocked.set()
            release.wait(30)  # hold the first of ours: the other four stay uncommitted behind it

    group = f"lag-{unique}"
    thread = threading.Thread(target=bus.run_consumer, args=(group, {EXTERNAL_TRIGGER: handler}), daemon=True)
    thread.start()
    try:
        assert blocked.wait(30)
        lag = _lag(group)
        assert lag is not None and lag >= 5, lag  # our five at least (earlier tests' events may precede them)
        release.set()
        _wait(lambda: len(mine) == 5)
        _wait(lambda: _lag(group) == 0)
    finally:
        release.set()
        bus.stop_event.set()
        thread.join(timeout=15)
        bus.close()
    handled = REGISTRY.get_sample_value(
        "driftloop_events_consumed_total",
        {"group": group, "topic": EXTERNAL_TRIGGER.name, "event_type": "ExternalTrigger", "outcome": "handled"},
    )
    assert handled is not None and handled >= 5
    assert (
        REGISTRY.get_sample_value(
            "driftloop_event_handle_seconds_count", {"group": group, "event_type": "ExternalTrigger"}
        )
        or 0
    ) >= 5
