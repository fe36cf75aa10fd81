"""The triggers' outbox (``driftloop.runtime.outbox``). A ``TrainingRequested`` is sent inside the transaction that
records its decision (``training_requests``), so a failed publish rolls the decision back; but a broker that loses
an acknowledged event (the embedded broker restarted with memory storage) would leave the request unsent for ever.
So each requested row that training was not seen to have (no ``RunStateChanged`` caused by it, no run for its
request id) is sent again, with its own event id, once per life of the ``TrainingRequested`` topic (its topic id,
new when a broker without storage restarts): a request sent after this process saw the topic's current life is
taken as sent in it; any other is checked with training and sent again if training has no run for it. Training
makes at most one run per request id, and its consumer handles an event id once: a repeat is harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from driftloop.clients.credentials import client_token
from driftloop.clients.db.models import TrainingRequest
from driftloop.clients.http import ServiceClient
from driftloop.contracts.events import Event, stored_event
from driftloop.contracts.settings import Settings
from driftloop.contracts.topics import TRAINING_REQUESTED
from driftloop.runtime import outbox
from driftloop.runtime.bus import EventBus, topic_id

from .handlers import as_utc, training_requested


def request_event(row: TrainingRequest, producer: str) -> Event[Any]:
    """The ``TrainingRequested`` event of a requested row, with the id and cascade it was first sent with."""
    assert row.event_id is not None
    return stored_event(
        training_requested(row),
        event_id=row.event_id,
        occurred_at=as_utc(row.updated_at or row.created_at),
        producer=producer,
        caused_by=row.cause_event_id,
        cascade_id=row.cascade_id,
    )


class RequestOutbox(outbox.Outbox):
    service = "triggers"

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        bus: EventBus,
        has_run: Callable[[str], bool],
        *,
        producer: str = "triggers",
        topic_life: Callable[[], str | None] | None = None,
    ) -> None:
        super().__init__(bus)
        self.Session = session_factory
        self.has_run = has_run
        self.producer = producer
        self.topic_life = topic_life or partial(topic_id, bus.settings, TRAINING_REQUESTED.name)
        self._first_seen: dict[str, datetime] = {}  # each life of the topic: when this process first saw it
        self._life: str | None = None

    def unannounced(self, now: datetime | None = None) -> list[Event[Any]]:
        now = now or datetime.now(tz=UTC)
        # Seen at every round, requests or not: a request sent after this is known to be in this life.
        life = self.topic_life()
        if life is None:  # a broker that does not tell its topics' ids: lives cannot be told apart
            return []
        self._life = life
        seen = self._first_seen.setdefault(life, now)
        with self.Session() as session:
            waiting = session.scalars(
                sa.select(TrainingRequest)
                .where(
                    TrainingRequest.status == "requested",
                    TrainingRequest.acknowledged_at.is_(None),
                    TrainingRequest.event_id.is_not(None),
                )
                .order_by(TrainingRequest.created_at)
            ).all()
        sent_in_life: list[str] = []
        acknowledged: list[str] = []
        resend: list[Event[Any]] = []
        for row in waiting:
            if row.published_in == life:
                continue
            if row.published_in is None and as_utc(row.updated_at or row.created_at) >= seen:
                sent_in_life.append(row.request_id)
            elif self.has_run(row.request_id):
                acknowledged.append(row.request_id)
            else:
                resend.append(request_event(row, self.producer))
        self._mark(sent_in_life, published_in=life)
        self._mark(acknowledged, acknowledged_at=now)
        return resend

    def republished(self, event: Event[Any]) -> None:
        self._mark([event.payload.request_id], published_in=self._life)

    def _mark(self, request_ids: list[str], **values: Any) -> None:
        if not request_ids:
            return
        with self.Session.begin() as session:
            session.execute(
                sa.update(TrainingRequest).where(TrainingRequest.request_id.in_(request_ids)).values(**values)
            )


def request_outbox(
    settings: Settings, session_factory: sessionmaker[Session], bus: EventBus, producer: str
) -> tuple[RequestOutbox, Callable[[], None]]:
    """The outbox, asking the training service's runs API whether it has a run for a request; and its stop hook."""
    training = ServiceClient("training", settings, token=partial(client_token, settings), timeout=10.0, retries=1)

    def has_run(request_id: str) -> bool:
        return bool(training.get("/v1/runs", params={"request_id": request_id, "limit": 1})["runs"])

    return RequestOutbox(session_factory, bus, has_run, producer=producer), training.close
