"""Predictions and their actual outcomes in serving's tables: every answered row is written off the hot path
(``PredictionRecorder``, batched by a background loop); feedback names a row by request id (+ row index) or by
entity (+ time: the newest prediction for the entity made at or before it), is stored, and is announced as
``FeedbackReceived``. The two tables join on (request_id, row_index)."""

from __future__ import annotations

import collections
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter

from driftloop.clients.db.models import PredictionFeedback, ServedPrediction
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import FeedbackReceived, Payload
from driftloop.errors import DriftloopError, NotFoundError, ValidationFailed
from driftloop.runtime.serde import json_safe

log = logging.getLogger(__name__)

PRODUCER = "serving"
FLUSH_SECONDS = 0.25
MAX_BATCH_ROWS = 2000
# Beyond this many unwritten rows new ones are dropped (counted): a slow database must not grow memory.
MAX_BACKLOG_ROWS = 200_000

RECORD_FAILURES = Counter("driftloop_serving_prediction_record_failures_total", "Prediction rows not stored", ["why"])
FEEDBACK_ROWS = Counter("driftloop_serving_feedback_total", "Feedback rows received", ["model"])


class PredictionRecorder:
    def __init__(self, engine: sa.Engine, replica: str) -> None:
        self.engine = engine
        self.replica = replica
        # One list of rows per answered request (a 1000-row request is one append, not a thousand puts).
        self._queue: collections.deque[list[dict[str, Any]]] = collections.deque()
        self._rows = 0
        self._lock = threading.Lock()  # the queue and its row count
        self._write_lock = threading.Lock()

    def record(self, result: dict[str, Any]) -> None:
        """Queue the rows of one answered request (``predict``'s result; ``inputs``, when given, is each row's logged
        inputs: the row's database record, read back when its feedback becomes a training label)."""
        request_id, model, version, replica = result["request_id"], result["model"], result["version"], self.replica
        now = result.get("answered_at") or datetime.now(tz=UTC)
        predictions = result["predictions"]
        inputs = result.get("inputs") or [None] * len(predictions)
        rows = [
            {
                "request_id": request_id,
                "row_index": index,
                "model": model,
                "version": version,
                "entity": entity,
                "prediction": prediction,
                "predicted_at": now,
                "replica": replica,
                "inputs": None if row_inputs is None else json_safe(row_inputs),
            }
            for index, (prediction, entity, row_inputs) in enumerate(
                zip(predictions, result["entities"], inputs, strict=True)
            )
        ]
        with self._lock:
            full = self._rows + len(rows) > MAX_BACKLOG_ROWS
            if not full:
                self._rows += len(rows)
                self._queue.append(rows)
        if full:
            RECORD_FAILURES.labels("backlog_full").inc(len(rows))

    def flush(self) -> int:
        """Write everything queued so far, ``MAX_BATCH_ROWS`` per executemany. Returns rows written."""
        written = 0
        with self._write_lock:
            with self._lock:
                taken = list(self._queue)
                self._queue.clear()
                self._rows -= sum(len(rows) for rows in taken)
            pending = [row for rows in taken for row in rows]
            for start in range(0, len(pending), MAX_BATCH_ROWS):
                batch = pending[start : start + MAX_BATCH_ROWS]
                try:
                    with self.engine.begin() as conn:
                        conn.execute(sa.insert(ServedPrediction), batch)
                    written += len(batch)
                except Exception:  # the loop must survive a database hiccup; rows are counted as lost
                    RECORD_FAILURES.labels("database").inc(len(batch))
                    log.exception("%d prediction rows were not stored", len(batch))
        return written

    def run(self, stop_event: threading.Event) -> None:
        while not stop_event.wait(FLUSH_SECONDS):
            self.flush()
        self.flush()


@dataclass(frozen=True)
class FeedbackItem:
    actual: float
    request_id: str | None = None
    index: int = 0
    entity: str | None = None
    at: datetime | None = None


class FeedbackDesk:
    def __init__(
        self,
        engine: sa.Engine,
        recorder: PredictionRecorder,
        publish: Callable[[Event[Payload]], None],
        flush_answers: Callable[[], object] | None = None,
    ) -> None:
        self.engine = engine
        self.recorder = recorder
        self.publish = publish
        # Answered rows still queued for logging (``predlog``) are handed to the recorder first.
        self.flush_answers = flush_answers

    def _flush(self) -> None:
        """This replica's latest answers must be resolvable at once."""
        if self.flush_answers is not None:
            self.flush_answers()
        self.recorder.flush()

    def _resolve(self, conn: sa.Connection, model: str, item: FeedbackItem, position: int) -> sa.Row[Any]:
        where = f"feedback[{position}]"
        if item.request_id is not None:
            row = conn.execute(
                sa.select(ServedPrediction).where(
                    ServedPrediction.request_id == item.request_id, ServedPrediction.row_index == item.index
                )
            ).first()
            if row is None or row.model != model:
                raise NotFoundError(
                    f"{where}: no prediction of {model!r} with request_id {item.request_id!r} and index {item.index}"
                )
            return row
        at = item.at or datetime.now(tz=UTC)
        row = conn.execute(
            sa.select(ServedPrediction)
            .where(
                ServedPrediction.model == model,
                ServedPrediction.entity == item.entity,
                ServedPrediction.predicted_at <= at,
            )
            .order_by(ServedPrediction.predicted_at.desc())
            .limit(1)
        ).first()
        if row is None:
            raise NotFoundError(f"{where}: no prediction of {model!r} for entity {item.entity!r} at or before {at}")
        return row

    def receive(self, model: str, items: list[FeedbackItem]) -> list[dict[str, Any]]:
        """Resolve every item first (all or nothing), then store and announce them."""
        for position, item in enumerate(items):
            if not math.isfinite(item.actual):
                raise ValidationFailed("not_finite", "actual", f"feedback[{position}].actual must be finite")
        self._flush()
        with self.engine.connect() as conn:
            resolved = [self._resolve(conn, model, item, i) for i, item in enumerate(items)]
        events = [
            new_event(
                FeedbackReceived(request_id=row.request_id, model=model, index=row.row_index, actual=item.actual),
                producer=PRODUCER,
            )
            for row, item in zip(resolved, items, strict=True)
        ]
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(PredictionFeedback),
                [
                    {
                        "event_id": event.id,
                        "model": model,
                        "request_id": row.request_id,
                        "row_index": row.row_index,
                        "actual": item.actual,
                        "received_at": datetime.now(tz=UTC),
                    }
                    for event, row, item in zip(events, resolved, items, strict=True)
                ],
            )
        for event in events:
            try:
                self.publish(event)
            except (DriftloopError, BufferError, ValueError):
                log.exception("FeedbackReceived %s was not published", event.id)
        FEEDBACK_ROWS.labels(model).inc(len(items))
        return [
            {
                "event_id": event.id,
                "request_id": row.request_id,
                "index": row.row_index,
                "version": row.version,
                "prediction": row.prediction,
                "actual": item.actual,
            }
            for event, row, item in zip(events, resolved, items, strict=True)
        ]

    def joined(self, model: str, limit: int) -> list[dict[str, Any]]:
        """The newest predictions of ``model`` that have feedback, with it."""
        self._flush()
        query = (
            sa.select(
                ServedPrediction.request_id,
                ServedPrediction.row_index,
                ServedPrediction.version,
                ServedPrediction.entity,
                ServedPrediction.prediction,
                ServedPrediction.predicted_at,
                PredictionFeedback.actual,
                PredictionFeedback.received_at,
            )
            .join(
                PredictionFeedback,
                sa.and_(
                    PredictionFeedback.request_id == ServedPrediction.request_id,
                    PredictionFeedback.row_index == ServedPrediction.row_index,
                ),
            )
            .where(ServedPrediction.model == model)
            .order_by(PredictionFeedback.received_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [
                {
                    "request_id": r.request_id,
                    "index": r.row_index,
                    "version": r.version,
                    "entity": r.entity,
                    "prediction": r.prediction,
                    "actual": r.actual,
                    "predicted_at": _iso(r.predicted_at),
                    "received_at": _iso(r.received_at),
                }
                for r in conn.execute(query)
            ]


def _iso(value: datetime) -> str:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
