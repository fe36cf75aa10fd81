"""Every answered row is logged, off the hot path: a request only queues its result (one append); a background loop
turns queued results into ``PredictionLogged`` events, publishes them in batches and hands the rows, with their
inputs, to the ``PredictionRecorder`` (serving's table: the rows' database record; the bus does not copy
PredictionLogged to the event log). A request's events are made together (``LoggedRows``: what its rows share,
once) and, on the bus, encoded and handed to the producer together (``BusWire``).

Nothing queued is lost: a producer queue that is momentarily full is waited for (the loop polls the producer and
retries), and the service's stop drains the queue before the bus is closed. What cannot be logged is counted on
``driftloop_serving_prediction_log_failures_total`` and logged as a warning, as before: rows refused because the
queue is over twice ``max_rows`` (requests wait for room below ``max_rows``, see ``room``: answers then come at
the pace they can be logged), and events the producer refuses for good."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from confluent_kafka import KafkaException
from prometheus_client import Counter, Gauge

from driftloop.contracts.events import Envelope, Event, new_event_ids, now_millis
from driftloop.contracts.payloads import Payload, PredictionLogged
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.contracts.topics import PREDICTION_LOGGED
from driftloop.errors import DriftloopError
from driftloop.runtime.bus import EventBus
from driftloop.runtime.serde import BatchWriter

from .feedback import PredictionRecorder

log = logging.getLogger(__name__)

PRODUCER = "serving"
FLUSH_SECONDS = 0.05
# At rest (a flush found nothing and nothing is queued) the loop sleeps until a request is queued, which wakes it
# (the request is logged at once); this only bounds how long a stop waits for the loop to notice.
REST_SECONDS = 1.0
# Logging a row (event, Avro, producer, its database row) costs about 0.015 ms of CPU: this many rows drain in well
# under a second, so a stopping replica logs its backlog within the stack's stop timeout. Requests wait for room
# below it (``room``); only past twice as many (requests racing for the same room) are rows counted as not logged.
MAX_QUEUED_ROWS = 20_000
ROOM_POLL_SECONDS = 0.002
# A full producer queue is waited for this long per event before the row is counted as not logged.
PUBLISH_PATIENCE_SECONDS = 30.0

LOG_FAILURES = Counter("driftloop_serving_prediction_log_failures_total", "Prediction rows not logged", ["model"])
LOG_WAITS = Counter(
    "driftloop_serving_prediction_log_waits_total", "Requests that waited for room in the prediction log queue"
)
LOG_QUEUED = Gauge("driftloop_serving_prediction_log_queued_rows", "Answered rows waiting to be logged")

Publish = Callable[[Event[Payload]], None]


class PredictionLog:
    def __init__(
        self,
        publish: Publish,
        pipelines: Mapping[str, PipelineConfig],
        recorder: PredictionRecorder | None = None,
        *,
        poll: Callable[[float], Any] | None = None,
        max_rows: int = MAX_QUEUED_ROWS,
        wire: Wire | None = None,
    ) -> None:
        self.publish = publish  # each row's event, when there is no ``wire`` (or it cannot encode a request)
        self.wire = wire
        self.recorder = recorder
        self.poll = poll  # the producer's poll: serves delivery reports and frees room in a full producer queue
        self.max_rows = max_rows
        self.pipelines = pipelines  # looked up per request: a pipeline applied live is logged with its fields
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._rows = 0
        self._lock = threading.Lock()  # the queue and its row count
        self._drain_lock = threading.Lock()  # one flush at a time: the loop, stop hooks and feedback all flush
        self._wake = threading.Event()
        self._resting = False  # the loop sleeps until ``submit`` wakes it (under ``_lock``)

    def has_room(self, rows: int) -> bool:
        with self._lock:
            return self._rows == 0 or self._rows + rows <= self.max_rows

    async def room(self, rows: int) -> None:
        """Wait (without blocking the event loop) until ``rows`` more fit: when answers come faster than they can
        be logged, requests slow down to the logging's pace instead of answered rows being dropped."""
        if self.has_room(rows):
            return
        LOG_WAITS.inc()
        self._wake.set()
        while not self.has_room(rows):
            await asyncio.sleep(ROOM_POLL_SECONDS)

    def submit(self, result: dict[str, Any]) -> None:
        """Queue one answered request (``predict.predict``'s result). Never blocks, never raises."""
        rows = len(result["predictions"])
        with self._lock:
            full = self._rows + rows > 2 * self.max_rows
            if not full:
                self._rows += rows
                self._queue.append(result)
            wake, self._resting = self._resting, False
        if wake:
            self._wake.set()
        if full:
            LOG_FAILURES.labels(result["model"]).inc(rows)
            log.warning(
                "%d prediction rows of %s (request %s) were not logged: %d rows already wait to be logged",
                rows,
                result["model"],
                result["request_id"],
                self.max_rows,
            )
        elif rows >= 256:
            self._wake.set()

    def pending(self) -> int:
        """Rows queued and not yet handed to the producer."""
        with self._lock:
            return self._rows

    def run(self, stop_event: threading.Event) -> None:
        """Flush every ``FLUSH_SECONDS`` while requests come (at once for a large one), and sleep at rest: the
        first request after a pause wakes the loop and is logged at once."""
        while not stop_event.is_set():
            self._wake.wait(REST_SECONDS if self._resting else FLUSH_SECONDS)
            self._wake.clear()
            flushed = self.flush()
            with self._lock:
                self._resting = flushed == 0 and self._rows == 0
        self.flush()

    def flush(self) -> int:
        """Publish everything queued so far; returns the rows handed to the producer. When it returns, every
        result submitted before the call is published and recorded (a flush under way elsewhere is waited for)."""
        done = 0
        with self._drain_lock:
            with self._lock:
                taken = list(self._queue)
                self._queue.clear()
            for result in taken:
                done += self._log(result)
                with self._lock:
                    self._rows -= len(result["predictions"])
            LOG_QUEUED.set(self.pending())
        return done

    def _log(self, result: dict[str, Any]) -> int:
        model = result["model"]
        pipeline = self.pipelines.get(model)
        fields = frozenset(pipeline.stream.field_names) if pipeline is not None else frozenset()
        entity_key = pipeline.stream.entity_key if pipeline is not None else None
        entities: list[Any] | None = result["entities"]
        if entities is None and entity_key:
            entities = [instance.get(entity_key) for instance in result["instances"]]
        # Per row, only its stream fields: the event's and the database record's inputs.
        # (An instance with nothing else is its own inputs: never changed after its answer.)
        inputs = [
            instance if instance.keys() <= fields else {k: v for k, v in instance.items() if k in fields}
            for instance in result["instances"]
        ]
        rows = LoggedRows.of(result, inputs, None if entities is None else [_entity(e) for e in entities])
        values = self._encoded(rows)
        if values is None:
            logged = 0
            for index, event in enumerate(rows.events()):
                if self._publish(event, model, rows.request_id, index):
                    logged += 1
        else:
            logged = self._produce(rows, values)
        if self.poll is not None:
            self.poll(0)  # the request's delivery reports (the publish sink may leave them to this poll)
        if self.recorder is not None:
            self.recorder.record({**result, "entities": rows.entities or [None] * len(inputs), "inputs": inputs})
        return logged

    def _encoded(self, rows: LoggedRows) -> list[bytes] | None:
        """The request's events encoded together by the wire, or None: each event is then published (no wire, or
        one the wire cannot encode, which ``publish`` then counts as before)."""
        if self.wire is None:
            return None
        try:
            return self.wire.encode(rows)
        except (DriftloopError, ValueError) as exc:
            log.debug("request %s logged event by event: %s", rows.request_id, exc)
            return None

    def _produce(self, rows: LoggedRows, values: list[bytes]) -> int:
        """Hand the encoded events to the producer, waiting for room in a full queue (``PUBLISH_PATIENCE_SECONDS``
        without progress); what it still refuses is counted as not logged."""
        assert self.wire is not None
        done = 0
        deadline = time.monotonic() + PUBLISH_PATIENCE_SECONDS
        while True:
            try:
                progress = self.wire.produce(rows, values, done)
            except (DriftloopError, ValueError) as exc:
                problem: Exception = exc
                break
            if progress == len(values):
                return progress
            if progress > done:
                done, deadline = progress, time.monotonic() + PUBLISH_PATIENCE_SECONDS
            if self.poll is None or time.monotonic() > deadline:
                problem = BufferError("the producer's queue stayed full")
                break
            self.poll(0.05)  # the producer's queue is full: let it send, then hand it the rest
        LOG_FAILURES.labels(rows.model).inc(len(values) - done)
        log.warning(
            "predictions %s/%d..%d of %s were not logged: %s",
            rows.request_id,
            done,
            len(values) - 1,
            rows.model,
            problem,
        )
        return done

    def _publish(self, event: Event[Payload], model: str, request_id: str, index: int) -> bool:
        deadline = time.monotonic() + PUBLISH_PATIENCE_SECONDS
        while True:
            try:
                self.publish(event)
                return True
            except BufferError as exc:
                # The producer's queue is full: let it send, then try again (the answer was given already).
                if self.poll is None or time.monotonic() > deadline:
                    problem: Exception = exc
                    break
                self.poll(0.05)
            except (DriftloopError, ValueError) as exc:
                problem = exc
                break
        LOG_FAILURES.labels(model).inc()
        log.warning("prediction %s/%d of %s was not logged: %s", request_id, index, model, problem)
        return False


def _entity(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class LoggedRows:
    """One answered request's rows as ``PredictionLogged`` events, made together (one timestamp, ids drawn at
    once): what the rows share once, the rest per row. ``events()`` are the events one by one; a ``Wire`` encodes
    the same events in one go (``shared`` and ``varying``)."""

    request_id: str
    model: str
    version: int
    inputs: list[dict[str, Any]]
    predictions: list[float]
    entities: list[str | None] | None
    event_ids: list[str]
    occurred_at: datetime

    @classmethod
    def of(cls, result: dict[str, Any], inputs: list[dict[str, Any]], entities: list[str | None] | None) -> LoggedRows:
        predictions = result["predictions"]
        if len(inputs) != len(predictions) or (entities is not None and len(entities) != len(predictions)):
            raise ValueError(f"request {result['request_id']}: rows, inputs and entities differ in number")
        return cls(
            result["request_id"],
            result["model"],
            result["version"],
            inputs,
            predictions,
            entities,
            new_event_ids(len(predictions)),
            now_millis(),
        )

    def events(self) -> list[Event[PredictionLogged]]:
        entities = self.entities or [None] * len(self.inputs)
        return [
            Event(
                Envelope(event_id, PredictionLogged.event_type, self.occurred_at, None, event_id, PRODUCER),
                PredictionLogged(
                    request_id=self.request_id,
                    model=self.model,
                    version=self.version,
                    index=index,
                    inputs=row_inputs,
                    prediction=prediction,
                    entity=entity,
                ),
            )
            for index, (event_id, row_inputs, prediction, entity) in enumerate(
                zip(self.event_ids, self.inputs, self.predictions, entities, strict=True)
            )
        ]

    def shared(self) -> dict[str, Any]:
        """The fields every row's event has alike, by path (``serde.BatchWriter``)."""
        return {
            "envelope.event_type": PredictionLogged.event_type,
            "envelope.occurred_at": self.occurred_at,
            "envelope.caused_by": None,  # each row's event is the root of its own cascade
            "envelope.producer": PRODUCER,
            "request_id": self.request_id,
            "model": self.model,
            "version": self.version,
        }

    def varying(self) -> list[Sequence[Any]]:
        """The values of ``VARYING_FIELDS``, a column each (one value per row)."""
        count = len(self.inputs)
        return [
            self.event_ids,
            self.event_ids,  # each row's event starts its cascade
            range(count),
            self.inputs,
            self.predictions,
            self.entities or [None] * count,
        ]


# The fields of a PredictionLogged event that differ between the rows of one request (``LoggedRows.varying``).
VARYING_FIELDS = ("envelope.event_id", "envelope.cascade_id", "index", "inputs", "prediction", "entity")


class Wire(Protocol):
    """Where a request's events go encoded together (``BusWire``); without one, ``PredictionLog`` publishes each
    row's event."""

    def encode(self, rows: LoggedRows) -> list[bytes]:
        """The request's events, one message each (DriftloopError/ValueError: publish them one by one instead)."""
        ...

    def produce(self, rows: LoggedRows, values: list[bytes], start: int) -> int:
        """Hand ``values[start:]`` to the producer; returns how far it got (``len(values)``: all)."""
        ...


class BusWire:
    """The bus's producer, with the request's events encoded by one ``BatchWriter`` of the PredictionLogged schema
    (registered once) and handed over with one delivery report handler: a few microseconds a row instead of an
    event object, fastavro's generic writer and a closure per row."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self._writer: BatchWriter | None = None

    def encode(self, rows: LoggedRows) -> list[bytes]:
        if self._writer is None:
            self._writer = self.bus.writer(PREDICTION_LOGGED).batch(VARYING_FIELDS)
        return self._writer.encode(rows.shared(), rows.varying())

    def produce(self, rows: LoggedRows, values: list[bytes], start: int) -> int:
        try:
            return self.bus.produce_encoded(PREDICTION_LOGGED, rows.model.encode(), values, start)
        except KafkaException as exc:
            raise DriftloopError(f"the producer refused the events: {exc}") from exc
