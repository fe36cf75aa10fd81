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
from itertools import repeat
from typing import Any

import pydantic_core
import sqlalchemy as sa
from prometheus_client import Counter

from driftloop.clients.db.models import PredictionFeedback, ServedPrediction
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import FeedbackReceived, Payload
from driftloop.errors import DriftloopError, NotFoundError, ValidationFailed

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
        # One answered request per entry (a 1000-row request is one append, not a thousand puts).
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._insert: _RowInsert | None = None
        self._rows = 0
        self._lock = threading.Lock()  # the queue and its row count
        self._write_lock = threading.Lock()

    def record(self, result: dict[str, Any]) -> None:
        """Queue the rows of one answered request (``predict``'s result; ``inputs``, when given, is each row's logged
        inputs: the row's database record, read back when its feedback becomes a training label). Kept as the
        request's lists: the rows are made when written (``flush``)."""
        rows = len(result["predictions"])
        with self._lock:
            full = self._rows + rows > MAX_BACKLOG_ROWS
            if not full:
                self._rows += rows
                self._queue.append(result)
        if full:
            RECORD_FAILURES.labels("backlog_full").inc(rows)

    def flush(self) -> int:
        """Write everything queued so far, ``MAX_BATCH_ROWS`` per executemany. Returns rows written."""
        written = 0
        with self._write_lock:
            with self._lock:
                taken = list(self._queue)
                self._queue.clear()
                self._rows -= sum(len(result["predictions"]) for result in taken)
            if not taken:
                return 0
            insert = self._insert or _RowInsert(self.engine)
            self._insert = insert
            pending: list[Any] = []
            for result in taken:
                try:
                    pending.extend(insert.rows(result, self.replica))
                except (ValueError, TypeError) as exc:  # a malformed result: counted, the others are written
                    RECORD_FAILURES.labels("malformed").inc(len(result["predictions"]))
                    log.error("prediction rows of request %s were not stored: %s", result.get("request_id"), exc)
            for start in range(0, len(pending), MAX_BATCH_ROWS):
                batch = pending[start : start + MAX_BATCH_ROWS]
                try:
                    with self.engine.begin() as conn:
                        insert.write(conn, batch)
                    written += len(batch)
                except Exception:  # the loop must survive a database hiccup; rows are counted as lost
                    RECORD_FAILURES.labels("database").inc(len(batch))
                    log.exception("%d prediction rows were not stored", len(batch))
        return written

    def run(self, stop_event: threading.Event) -> None:
        while not stop_event.wait(FLUSH_SECONDS):
            self.flush()
        self.flush()


_COLUMNS = ("request_id", "row_index", "model", "version", "entity", "prediction", "predicted_at", "replica", "inputs")


class _RowInsert:
    """``serving_predictions`` rows written with one executemany of plain tuples on the DBAPI cursor: the insert
    compiled once for the engine's dialect, what a request's rows share converted once per request (its time by the
    column type's own bind processor), and each row's inputs serialized by pydantic-core (non-finite numbers as
    null, as ``json_safe`` makes them). SQLAlchemy's executemany of dicts did that work per row and per value:
    25 us a row, the most of it bind processing."""

    def __init__(self, engine: sa.Engine) -> None:
        dialect = engine.dialect
        compiled = sa.insert(ServedPrediction).compile(dialect=dialect, column_keys=list(_COLUMNS))
        self.sql = compiled.string
        # Positional parameters: the columns' places in the statement's order (None: named parameters).
        self.order: tuple[int, ...] | None = None
        if compiled.positional:
            names = list(compiled.positiontup or [])
            if sorted(names) != sorted(_COLUMNS):
                raise DriftloopError(f"unexpected insert parameters {names} for serving_predictions")
            self.order = tuple(_COLUMNS.index(name) for name in names)
        column_type = ServedPrediction.__table__.c.predicted_at.type
        self.bind_time = column_type.dialect_impl(dialect).bind_processor(dialect)

    def rows(self, result: dict[str, Any], replica: str) -> list[Any]:
        request_id, model, version = result["request_id"], result["model"], result["version"]
        answered_at = result.get("answered_at") or datetime.now(tz=UTC)
        predicted_at = self.bind_time(answered_at) if self.bind_time is not None else answered_at
        predictions = result["predictions"]
        entities = result["entities"]
        count = len(predictions)
        inputs = result.get("inputs") or None
        texts = [None] * count if inputs is None else list(map(_json_text, inputs))
        if len(entities) != count or len(texts) != count:
            raise ValueError(f"request {request_id}: predictions, entities and inputs differ in number")
        # Column by column, joined into rows by zip (a C loop: no Python per row but the inputs' JSON).
        rows = list(
            zip(
                repeat(request_id, count),
                range(count),
                repeat(model, count),
                repeat(version, count),
                entities,
                predictions,
                repeat(predicted_at, count),
                repeat(replica, count),
                texts,
                strict=True,
            )
        )
        if self.order is None:  # named parameters
            return [dict(zip(_COLUMNS, row, strict=True)) for row in rows]
        if self.order != tuple(range(len(_COLUMNS))):
            return [tuple(row[i] for i in self.order) for row in rows]
        return rows

    def write(self, conn: sa.Connection, rows: list[Any]) -> None:
        conn.exec_driver_sql(self.sql, rows)


def _json_text(value: dict[str, Any] | None) -> str | None:
    return None if value is None else pydantic_core.to_json(value, inf_nan_mode="null").decode()


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
