"""Every answered row is logged, off the hot path: a request only queues its result (one append); a background loop
turns queued results into ``PredictionLogged`` events, publishes them in batches and hands the rows, with their
inputs, to the ``PredictionRecorder`` (serving's table: the rows' database record; the bus does not copy
PredictionLogged to the event log).

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
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge

from driftloop.contracts.events import Event, new_events
from driftloop.contracts.payloads import Payload, PredictionLogged
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.errors import DriftloopError

from .feedback import PredictionRecorder

log = logging.getLogger(__name__)

PRODUCER = "serving"
FLUSH_SECONDS = 0.05
# At rest (a flush found nothing and nothing is queued) the loop sleeps until a request is queued, which wakes it
# (the request is logged at once); this only bounds how long a stop waits for the loop to notice.
REST_SECONDS = 1.0
# Logging a row (event, Avro, producer) costs about 0.03 ms of CPU: this many rows drain in a second or two, so a
# stopping replica logs its backlog within the stack's stop timeout. Requests wait for room below it (``room``);
# only past twice as many (requests racing for the same room) are rows counted as not logged.
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
    ) -> None:
        self.publish = publish
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
        entities: list[str | None] | None = result["entities"]
        if entities is None:
            entities = [_entity(instance.get(entity_key)) for instance in result["instances"]] if entity_key else None
        request_id, version = result["request_id"], result["version"]
        # Per row, only its stream fields: the event's and the database record's inputs.
        inputs = [{k: v for k, v in instance.items() if k in fields} for instance in result["instances"]]
        # The request's rows as events made together (one timestamp, ids drawn at once).
        events = new_events(
            [
                PredictionLogged(
                    request_id=request_id,
                    model=model,
                    version=version,
                    index=index,
                    inputs=row_inputs,
                    prediction=prediction,
                    entity=None if entities is None or entities[index] is None else str(entities[index]),
                )
                for index, (row_inputs, prediction) in enumerate(zip(inputs, result["predictions"], strict=True))
            ],
            producer=PRODUCER,
        )
        logged = 0
        for index, event in enumerate(events):
            if self._publish(event, model, request_id, index):
                logged += 1
        if self.poll is not None:
            self.poll(0)  # the request's delivery reports (the publish sink may leave them to this poll)
        if self.recorder is not None:
            self.recorder.record(
                {**result, "entities": entities or [None] * len(result["predictions"]), "inputs": inputs}
            )
        return logged

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
