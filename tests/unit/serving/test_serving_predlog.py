"""The prediction log (``predlog.PredictionLog``): every queued row published once, in order, with its entity; a
full producer queue waited for, not dropped; requests wait for room when logging falls behind; rows past the hard
bound counted on the failures metric."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from model_factory import make_pipeline

from driftloop.contracts.events import Event
from driftloop.services.serving.predlog import LOG_FAILURES, PredictionLog

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
