"""The registry's outbox, drained continuously: every event stored with the state it announces (a version's
``ModelRegistered``/``ModelPromoted``/``ModelRejected``, an alias row's last ``ModelPromoted``) that is not in the
event log yet (written only after the broker acknowledged it) is published again with its own id, at start and
every ``OUTBOX_INTERVAL_SECONDS``. A publish that failed (broker down, producer fenced) is so repaired once the bus
is back, without waiting for a restart or a redelivery. Consumers handle an event id once: a repeat is harmless.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.orm import Session, sessionmaker

from driftloop.clients.db.models import EventRecord, ModelAlias, ModelVersion
from driftloop.runtime.bus import EventBus

from .repository import event_from_json

log = logging.getLogger(__name__)

OUTBOX_INTERVAL_SECONDS = 10.0
# An event younger than this is still on its way through the normal path (publish, delivery, event log).
IN_FLIGHT = timedelta(seconds=30)

OUTBOX_REPUBLISHED = Counter(
    "driftloop_registry_outbox_republished_total", "Outbox events published again (not in the event log)", ["type"]
)


def _occurred_at(stored: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(int(stored["envelope"]["occurred_at"]) / 1000, tz=UTC)


class Outbox:
    def __init__(self, session_factory: sessionmaker[Session], bus: EventBus) -> None:
        self.Session = session_factory
        self.bus = bus
        self.last_error: str | None = None

    def unannounced(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Stored events older than ``IN_FLIGHT`` that the event log does not have, oldest first."""
        before = (now or datetime.now(tz=UTC)) - IN_FLIGHT
        with self.Session() as session:
            stored: dict[str, dict[str, Any]] = {}
            for outbox in session.scalars(sa.select(ModelVersion.outbox)):
                for item in outbox or []:
                    stored[item["envelope"]["event_id"]] = item
            for event in session.scalars(sa.select(ModelAlias.event).where(ModelAlias.event.is_not(None))):
                stored[event["envelope"]["event_id"]] = event
            candidates = [i for i, item in stored.items() if _occurred_at(item) < before]
            known: set[str] = set()
            for start in range(0, len(candidates), 500):
                chunk = candidates[start : start + 500]
                known.update(session.scalars(sa.select(EventRecord.event_id).where(EventRecord.event_id.in_(chunk))))
        missing = [stored[i] for i in candidates if i not in known]
        return sorted(missing, key=_occurred_at)

    def drain(self, now: datetime | None = None) -> int:
        """Publish every unannounced event (with its id); returns how many."""
        missing = self.unannounced(now)
        for stored in missing:
            event = event_from_json(stored)
            self.bus.publish(event)
            OUTBOX_REPUBLISHED.labels(event.type).inc()
            log.warning("outbox: %s %s was not in the event log; published again", event.type, event.id)
        if missing:
            self.bus.flush()  # into the event log now, so that the next drain finds nothing to do
        return len(missing)

    def drain_loop(self, stop_event: threading.Event) -> None:
        while True:
            try:
                self.drain()
                self.last_error = None
            except Exception as exc:  # broker or database away: the next round tries again
                self.last_error = f"outbox drain failed: {exc!r}"
                log.warning("registry %s", self.last_error)
            if stop_event.wait(OUTBOX_INTERVAL_SECONDS):
                return
