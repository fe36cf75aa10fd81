"""The prediction log (``predlog.PredictionLog``): every queued row published once, in order, with its entity; a
full producer queue waited for, not dropped; requests wait for room when logging falls behind; rows past the hard
bound counted on the failures metric."""

from __future__ import annotations

import asyncio
import io
import threading
from typing import Any

import fastavro
from model_factory import make_pipeline

from driftloop.contracts.events import Event
from driftloop.contracts.schemas import event_schema
from driftloop.contracts.topics import PREDICTION_LOGGED
from driftloop.runtime.serde import HEADER, RecordWriter
from driftloop.services.serving import predlog
from driftloop.services.serving.predlog import LOG_FAILURES, VARYING_FIELDS, LoggedRows, PredictionLog

MODEL = "fraud-predlog"


def result(request_id: str, rows: int) -> dict[str, Any]:
    instances = [{"customer_id": f"c{i}", "amount": float(i), "not_a_field": 1} for i in range(rows)]
    return {
        "model": MODEL,
        "version": 3,
        "request_id": request_id,
        "predictions": [i / 10 for i in range(rows)],
        "instances": instances,
        "entities": None,
    }


def test_every_queued_row_is_published_once_with_its_entity_and_stream_fields() -> None:
    published: list[Event] = []
    log = PredictionLog(published.append, {MODEL: make_pipeline(model=MODEL, stream="tx-predlog")})
    log.submit(result("a", 3))
    log.submit(result("b", 2))
    assert published == [] and log.pending() == 5  # nothing on the request's path
    assert log.flush() == 5
    keys = [(e.payload.request_id, e.payload.index) for e in published]
    assert keys == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]
    assert published[2].payload.entity == "c2" and published[2].payload.prediction == 0.2
    assert published[2].payload.version == 3 and "not_a_field" not in published[2].payload.inputs
    assert log.flush() == 0 and log.pending() == 0


def test_a_full_producer_queue_is_waited_for() -> None:
    published: list[Event] = []
    polls: list[float] = []
    refusals = iter([True, True, False, False])

    def publish(event: Event) -> None:
        if next(refusals, False):
            raise BufferError("Local: Queue full")
        published.append(event)

    log = PredictionLog(publish, {MODEL: make_pipeline(model=MODEL, stream="tx-predlog")}, poll=polls.append)
    before = LOG_FAILURES.labels(MODEL)._value.get()
    log.submit(result("r", 2))
    assert log.flush() == 2
    assert len(published) == 2 and len(polls) >= 2
    assert LOG_FAILURES.labels(MODEL)._value.get() == before


def test_requests_wait_for_room_and_rows_past_the_hard_bound_are_counted() -> None:
    published: list[Event] = []
    log = PredictionLog(published.append, {MODEL: make_pipeline(model=MODEL, stream="tx-predlog")}, max_rows=10)
    log.submit(result("first", 8))
    assert not log.has_room(5)

    async def wait_then_flush() -> None:
        waiting = asyncio.ensure_future(log.room(5))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # no room yet: the request waits
        flusher = threading.Thread(target=log.flush)
        flusher.start()
        await asyncio.wait_for(waiting, timeout=10)
        flusher.join()

    asyncio.run(wait_then_flush())
    assert len(published) == 8

    before = LOG_FAILURES.labels(MODEL)._value.get()
    log.submit(result("huge", 25))  # past twice the bound (a request that did not wait): counted, not queued
    assert LOG_FAILURES.labels(MODEL)._value.get() == before + 25
    assert log.pending() == 0


class ListWire:
    """A ``Wire`` on a list: the real batch encoder of the PredictionLogged schema; the producer takes at most
    ``room`` values per call (a full queue), or refuses for good (``room`` 0)."""

    def __init__(self, room: int = 10**9) -> None:
        schema = event_schema("PredictionLogged")
        self.writer = RecordWriter(PREDICTION_LOGGED.subject, HEADER.pack(0, 1), fastavro.parse_schema(schema))
        self.batch = self.writer.batch(VARYING_FIELDS)
        self.room = room
        self.produced: list[bytes] = []
        self.logged: list[LoggedRows] = []

    def encode(self, rows: LoggedRows) -> list[bytes]:
        self.logged.append(rows)
        return self.batch.encode(rows.shared(), rows.varying())

    def produce(self, rows: LoggedRows, values: list[bytes], start: int) -> int:
        taken = values[start : start + self.room]
        self.produced.extend(taken)
        return start + len(taken)

    def events(self) -> list[Event]:
        parsed = self.writer.parsed
        return [Event.from_avro(fastavro.schemaless_reader(io.BytesIO(v[5:]), parsed)) for v in self.produced]


def test_the_wire_carries_the_events_publishing_row_by_row_would() -> None:
    pipelines = {MODEL: make_pipeline(model=MODEL, stream="tx-predlog")}
    wire = ListWire()
    published: list[Event] = []
    log = PredictionLog(published.append, pipelines, wire=wire)
    log.submit(result("a", 3))
    log.submit({**result("b", 2), "entities": ["x", None]})  # looked-up entities: as given
    assert log.flush() == 5 and published == []
    events = wire.events()
    assert events == [e for rows in wire.logged for e in rows.events()]  # the batch is the per-row events
    assert [(e.payload.request_id, e.payload.index) for e in events] == [
        ("a", 0),
        ("a", 1),
        ("a", 2),
        ("b", 0),
        ("b", 1),
    ]
    assert events[2].payload.entity == "c2" and events[2].payload.prediction == 0.2
    assert events[2].payload.inputs == {"customer_id": "c2", "amount": 2.0}  # stream fields only
    assert [e.payload.entity for e in events[3:]] == ["x", None]
    assert len({e.id for e in events}) == 5 and all(e.envelope.cascade_id == e.id for e in events)
    assert {e.envelope.occurred_at for e in events[:3]} == {wire.logged[0].occurred_at}

    # The same rows through publish, one event each: the same events but for their ids and time.
    per_row: list[Event] = []
    alone = PredictionLog(per_row.append, pipelines)
    alone.submit(result("a", 3))
    alone.flush()
    assert [e.payload for e in per_row] == [e.payload for e in events[:3]]


def test_a_full_producer_queue_is_waited_for_on_the_wire() -> None:
    polls: list[float] = []
    wire = ListWire(room=4)  # four a call: the rest waits for a poll
    log = PredictionLog(lambda e: None, {MODEL: make_pipeline(model=MODEL, stream="tx-predlog")}, poll=polls.append,
                        wire=wire)  # fmt: skip
    before = LOG_FAILURES.labels(MODEL)._value.get()
    log.submit(result("r", 10))
    assert log.flush() == 10
    assert [e.payload.index for e in wire.events()] == list(range(10)) and len(polls) >= 2
    assert LOG_FAILURES.labels(MODEL)._value.get() == before


def test_rows_the_producer_keeps_refusing_are_counted(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(predlog, "PUBLISH_PATIENCE_SECONDS", 0.0)
    wire = ListWire(room=0)
    log = PredictionLog(lambda e: None, {MODEL: make_pipeline(model=MODEL, stream="tx-predlog")}, poll=lambda t: None,
                        wire=wire)  # fmt: skip
    before = LOG_FAILURES.labels(MODEL)._value.get()
    log.submit(result("r", 6))
    assert log.flush() == 0
    assert LOG_FAILURES.labels(MODEL)._value.get() == before + 6 and log.pending() == 0


def test_a_request_the_wire_cannot_encode_is_published_event_by_event() -> None:
    published: list[Event] = []
    wire = ListWire()
    log = PredictionLog(published.append, {MODEL: make_pipeline(model=MODEL, stream="tx-predlog")}, wire=wire)
    odd = result("odd", 2)
    odd["instances"][1]["amount"] = 2**40  # a long: fine; the version below is not an Avro int
    log.submit({**odd, "version": 2**31})
    log.submit(result("fine", 1))
    assert log.flush() == 3
    assert [e.payload.request_id for e in published] == ["odd", "odd"]
    assert [e.payload.request_id for e in wire.events()] == ["fine"]
