"""Outboxes drained continuously: a service that stores, with its state, the events announcing that state publishes
again (with each event's own id) whatever its own test says did not arrive, at start and every
``OUTBOX_INTERVAL_SECONDS``: a publish that failed (broker down, producer fenced) or an event an embedded broker lost
in a restart is so repaired once the bus is back, without waiting for a restart or a redelivery. Consumers handle
an event id once, so a repeat is harmless.

A service's outbox says what is missing (``unannounced``) and, if it keeps track, notes what went out again
(``republished``); the drain, its loop, its metric and its logs are here, the same for every service."""

from __future__ import annotations

import collections
import logging
import threading
from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any

from prometheus_client import Counter

from driftloop.contracts.events import Event
from driftloop.runtime.bus import EventBus

log = logging.getLogger(__name__)

OUTBOX_INTERVAL_SECONDS = 10.0

OUTBOX_REPUBLISHED = Counter(
    "driftloop_outbox_republished_total", "Stored events published again by a service's outbox", ["service", "type"]
)


class Outbox(ABC):
    """One service's outbox; ``drain_loop`` is a service loop (``ServiceSpec.loops``)."""

    service: str = "service"
    interval: float = OUTBOX_INTERVAL_SECONDS

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.last_error: str | None = None

    @abstractmethod
    def unannounced(self, now: datetime | None = None) -> list[Event[Any]]:
        """The stored events to publish again now, oldest first."""

    def republished(self, event: Event[Any]) -> None:
        """Called after ``event`` went out again (the broker acknowledged it); nothing to note by default."""
        return None

    def drain(self, now: datetime | None = None) -> int:
        """Publish every unannounced event (with its id); returns how many."""
        missing = self.unannounced(now)
        by_type: collections.Counter[str] = collections.Counter()
        for event in missing:
            self.bus.publish(event)
            self.republished(event)
            OUTBOX_REPUBLISHED.labels(self.service, event.type).inc()
            by_type[event.type] += 1
            log.debug("%s outbox: %s %s had not arrived; published again", self.service, event.type, event.id)
        if missing:
            self.bus.flush()  # into the event log now, so that the next drain finds nothing to do
            # One line per round (a broker outage can leave thousands of dead letters to announce), ids at debug.
            counts = ", ".join(f"{count} {kind}" for kind, count in sorted(by_type.items()))
            log.warning(
                "%s outbox: %s had not arrived; published again (first: %s)", self.service, counts, missing[0].id
            )
        return len(missing)

    def drain_loop(self, stop_event: threading.Event) -> None:
        while True:
            try:
                self.drain()
                self.last_error = None
            except Exception as exc:  # broker or database away: the next round tries again
                self.last_error = f"outbox drain failed: {exc!r}"
                log.warning("%s %s", self.service, self.last_error)
            if stop_event.wait(self.interval):
                return
