"""The ingestion outboxes: a dead letter whose RecordRejected the broker never acknowledged is published again by
the drain, with its own event id, once the producer cannot be delivering it any more, and marked announced only
after the broker acknowledged it; one that did arrive (it is in the event log) is only marked. Marks are set a chunk
of rows per statement. A dataset version whose DatasetVersionCreated never arrived is published again the same
way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from driftloop.clients.db import create_engine_for, migrate, session_factory
from driftloop.clients.db.models import DatasetVersion, DeadLetter
from driftloop.contracts.events import Event
from driftloop.contracts.pipeline import PipelineConfig, parse_pipeline
from driftloop.contracts.settings import Settings
from driftloop.errors import DriftloopError
from driftloop.runtime.bus import EventLog
from driftloop.services.ingestion import outbox as outbox_module
from driftloop.services.ingestion.landing import Lander
from driftloop.services.ingestion.outbox import DeadLetterOutbox, VersionOutbox, delivery_timeout
from driftloop.services.ingestion.validation import Rejection

STREAM = "payments"
IN_FLIGHT = timedelta(minutes=1)


class Bus:
    """Like the real bus: an acknowledged event goes into the event log; with the broker down a publish that
    waits raises and one that does not wait is lost."""

    producer_name = "ingestion"

    def __init__(self, engine: sa.Engine) -> None:
        self.Session = session_factory(engine)
        self.log = EventLog(engine)
        self.up = True
        self.delivered: list[Event[Any]] = []

    def publish(self, event: Event[Any], *, wait: bool = True, poll: bool = True) -> None:
        if not self.up:
            if wait:
                raise DriftloopError("publishing failed: broker unreachable")
            return
        self.delivered.append(event)
        self.log.write([event])

    def flush(self) -> None:
        pass


@pytest.fixture
def env(tmp_path: Path) -> tuple[Bus, Lander, DeadLetterOutbox]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    bus = Bus(create_engine_for(url))
    lander = Lander(bus, store=None)  # type: ignore[arg-type]  # dead letters only: no object store
    return bus, lander, DeadLetterOutbox(bus.Session, bus, in_flight=IN_FLIGHT)  # type: ignore[arg-type]


def reject(lander: Lander, first: int, count: int) -> None:
    letters = [(Rejection("out_of_range", "amount", f"amount is {i}"), f"http:req/{i}", b"{}") for i in range(count)]
    lander.dead_letters(STREAM, [(r, s.replace("req", f"req{first}"), o) for r, s, o in letters])


def announced(bus: Bus) -> dict[str, bool]:
    with bus.Session() as session:
        return {row.source: row.announced_at is not None for row in session.scalars(sa.select(DeadLetter))}


def later() -> datetime:
    return datetime.now(tz=UTC) + IN_FLIGHT + timedelta(seconds=1)


def test_dead_letters_lost_while_the_broker_was_down_are_announced_once_when_it_is_back(env) -> None:  # type: ignore[no-untyped-def]
    bus, lander, outbox = env
    reject(lander, 1, 2)  # delivered
    bus.up = False
    reject(lander, 2, 3)  # lost: the hot path does not wait for the broker
    assert len(bus.delivered) == 2

    assert outbox.drain() == 0  # the lost ones may still be on their way: not yet
    assert announced(bus) == {f"http:req1/{i}": True for i in range(2)} | {f"http:req2/{i}": False for i in range(3)}

    with pytest.raises(DriftloopError):  # broker still down: nothing marked
        outbox.drain(later())
    assert sum(announced(bus).values()) == 2

    bus.up = True
    assert outbox.drain(later()) == 3
    republished = bus.delivered[2:]
    with bus.Session() as session:
        stored = {row.source: row for row in session.scalars(sa.select(DeadLetter))}
    assert sorted(e.payload.source for e in republished) == [f"http:req2/{i}" for i in range(3)]
    for event in republished:  # the same event as the hot path's: its id, its record
        row = stored[event.payload.source]
        assert (event.id, event.payload.reason, event.payload.message) == (row.event_id, row.reason, row.message)
    assert all(announced(bus).values())
    assert outbox.drain(later()) == 0  # announced once
    assert len(bus.delivered) == 5


def test_a_drain_that_fails_midway_marks_what_the_broker_acknowledged(env) -> None:  # type: ignore[no-untyped-def]
    bus, lander, outbox = env
    bus.up = False
    reject(lander, 1, 3)
    bus.up = True
    calls = {"n": 0}
    publish = bus.publish

    def broker_dies_after_two(event: Event[Any], *, wait: bool = True, poll: bool = True) -> None:
        calls["n"] += 1
        if calls["n"] > 2:
            raise DriftloopError("publishing failed: broker unreachable")
        publish(event, wait=wait)

    bus.publish = broker_dies_after_two  # type: ignore[method-assign]
    with pytest.raises(DriftloopError):
        outbox.drain(later())
    assert sorted(announced(bus).values()) == [False, True, True]
    bus.publish = publish  # type: ignore[method-assign]
    assert outbox.drain(later()) == 1
    assert sorted(e.payload.source for e in bus.delivered) == [f"http:req1/{i}" for i in range(3)]


def test_many_dead_letters_take_a_statement_per_chunk_not_per_row(env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bus, lander, outbox = env
    monkeypatch.setattr(outbox_module, "CHUNK", 4)
    reject(lander, 1, 10)
    statements: list[str] = []
    sa.event.listen(bus.Session.kw["bind"], "before_cursor_execute", lambda *a: statements.append(a[2]))
    assert outbox.drain() == 0
    assert all(announced(bus).values())
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE")]
    assert len(updates) == 3  # 10 rows marked in chunks of 4


def test_a_replayed_source_is_not_stored_nor_published_again(env) -> None:  # type: ignore[no-untyped-def]
    bus, lander, _ = env
    reject(lander, 1, 2)
    reject(lander, 1, 3)  # a replay after a crash: two seen before
    assert len(bus.delivered) == 3
    assert len(announced(bus)) == 3


def test_the_in_flight_time_follows_the_producer_delivery_timeout() -> None:
    default = Settings()
    assert delivery_timeout(default) == timedelta(minutes=5) + outbox_module.IN_FLIGHT_MARGIN
    short = Settings(kafka={"client_config": {"message.timeout.ms": "2000"}})
    assert delivery_timeout(short) == timedelta(seconds=2) + outbox_module.IN_FLIGHT_MARGIN


PIPELINE = """
stream:
  name: payments
  fields:
    - {name: customer_id, type: string, nullable: false}
    - {name: event_time, type: timestamp}
    - {name: amount, type: double}
    - {name: label, type: int}
  entity_key: customer_id
  event_time: event_time
  label: label
features:
  - {name: amount}
model: {name: payments-model}
"""


def store_version(bus: Bus, version: int, event_id: str) -> None:
    with bus.Session.begin() as session:
        session.add(
            DatasetVersion(
                id=f"{STREAM}@v{version}",
                stream=STREAM,
                version=version,
                uri=f"file:///datasets/{STREAM}/v{version}",
                content_hash="0" * 64,
                row_count=10 * version,
                new_rows=10,
                parent_id=f"{STREAM}@v{version - 1}" if version > 1 else None,
                mode="cumulative",
                schema_json={},
                profile={},
                event_id=event_id,
            )
        )


def test_a_dataset_version_whose_event_never_arrived_is_announced_by_the_drain(env) -> None:  # type: ignore[no-untyped-def]
    bus = env[0]
    pipelines: dict[str, PipelineConfig] = {"payments-model": parse_pipeline(PIPELINE)}
    outbox = VersionOutbox(bus.Session, bus, pipelines, in_flight=IN_FLIGHT)  # type: ignore[arg-type]
    store_version(bus, 1, "e-1")
    first = outbox.unannounced(later())
    bus.publish(first[0])  # the cut's own publish arrived
    store_version(bus, 2, "e-2")  # its cut's publish failed after the commit
    assert outbox.drain() == 0  # its cut may still be publishing it
    assert outbox.drain(later()) == 1
    (again,) = bus.delivered[1:]
    assert (again.id, again.payload.dataset_version_id, again.payload.parent_version_id) == (
        "e-2",
        f"{STREAM}@v2",
        f"{STREAM}@v1",
    )
    assert outbox.drain(later()) == 0
