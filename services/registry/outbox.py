"""The registry's outbox (``driftloop.runtime.outbox``): every event stored with the state it announces (a version's
``ModelRegistered``/``ModelPromoted``/``ModelRejected``, an alias row's last ``ModelPromoted``) that is not in the
event log yet (written only after the broker acknowledged it) is published again with its own id.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from driftloop.clients.db.models import EventRecord, ModelAlias, ModelVersion
from driftloop.contracts.events import Event
from driftloop.runtime import outbox
from driftloop.runtime.bus import EventBus

from .repository import event_from_json

# An event younger than this is still on its way through the normal path (publish, delivery, event log).
IN_FLIGHT = timedelta(seconds=30)


def _occurred_at(stored: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(int(stored["envelope"]["occurred_at"]) / 1000, tz=UTC)


class Outbox(outbox.Outbox):
    service = "registry"

    def __init__(self, session_factory: sessionmaker[Session], bus: EventBus) -> None:
        super().__init__(bus)
        self.Session = session_factory

    def unannounced(self, now: datetime | None = None) -> list[Event[Any]]:
        """Stored events older than ``IN_FLIGHT`` that the event log does not have, oldest first."""
        before = (now or datetime.now(tz=UTC)) - IN_FLIGHT
        with self.Session() as session:
            stored: dict[str, dict[str, Any]] = {}
            for box in session.scalars(sa.select(ModelVersion.outbox)):
                for item in box or []:
                    stored[item["envelope"]["event_id"]] = item
            for event in session.scalars(sa.select(ModelAlias.event).where(ModelAlias.event.is_not(None))):
                stored[event["envelope"]["event_id"]] = event
            candidates = [i for i, item in stored.items() if _occurred_at(item) < before]
            known: set[str] = set()
            for start in range(0, len(candidates), 500):
                chunk = candidates[start : start + 500]
                known.update(session.scalars(sa.select(EventRecord.event_id).where(EventRecord.event_id.in_(chunk))))
        missing = [stored[i] for i in candidates if i not in known]
        return [event_from_json(item) for item in sorted(missing, key=_occurred_at)]
