"""The registry's outbox is drained continuously: an alias move whose ModelPromoted never reached the broker (and so
never the event log) is published again with its own id by the next drain, without a restart or a repeated call."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from registry_support import ADMIN, MODEL

from driftloop.clients.db.models import EventRecord
from driftloop.contracts.events import Event
from driftloop.errors import DriftloopError
from driftloop.runtime.bus import EventLog
from driftloop.services.registry.outbox import Outbox
from driftloop.services.registry.repository import event_from_json


class LoggingBus:
    """Publishes into a list and, like the real bus after delivery, into the event log."""

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        self.log = EventLog(engine)
        self.published: list[Event] = []

    def publish(self, event: Event, *, wait: bool = True) -> None:
        self.published.append(event)
        self.log.write([event])

    def flush(self) -> None:
        pass


def test_an_event_the_broker_never_acknowledged_is_published_again_by_the_drain(env: dict) -> None:
    registry, client, bus = env["registry"], env["client"], env["bus"]
    engine = registry.Session.kw["bind"]
    logging_bus = LoggingBus(engine)
    # Everything the fixture published so far did reach the log.
    for version in registry.versions(MODEL):
        logging_bus.log.write([event_from_json(stored) for stored in version.outbox])
    for alias in registry.alias_rows(MODEL):
        logging_bus.log.write([event_from_json(alias.event)])
    outbox = Outbox(registry.Session, logging_bus)  # type: ignore[arg-type]
    later = datetime.now(tz=UTC) + timedelta(minutes=5)
    assert outbox.unannounced(later) == []

    def broker_down(event: Event, *, wait: bool = True) -> None:
        raise DriftloopError("broker unreachable")

    bus.publish = broker_down
    failed = client.put(f"/v1/models/{MODEL}/aliases/champion", json={"version": 1, "reason": "x"}, headers=ADMIN)
    assert failed.status_code == 503
    stored_id = registry.alias(MODEL, "champion").event_id

    assert outbox.drain() == 0  # still in flight: the normal path may deliver it yet
    assert outbox.drain(later) == 1
    assert [e.id for e in logging_bus.published] == [stored_id]
    assert logging_bus.published[0].payload.version == 1
    with registry.Session() as session:
        assert session.get(EventRecord, stored_id) is not None
    assert outbox.drain(later) == 0  # announced once
