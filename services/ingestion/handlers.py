"""The ingestion logic behind the HTTP API, testable without a web server: JSON record batches and stats.

(Ingestion consumes no driftloop events: its input is the users' record streams, see ``kafka_intake``.)
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from driftloop.clients.db.models import IngestionIdempotencyKey, LandedBatch
from driftloop.contracts.layout import landed_http_key
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.errors import InvalidRequest

from .deadletters import counts as dead_letter_counts
from .landing import Lander, json_bytes
from .validation import validate_json

MAX_BATCH_RECORDS = 10_000
MAX_BODY_BYTES = 32 * 1024 * 1024


@dataclass
class BatchResult:
    request_id: str
    accepted: int
    rejected: list[dict[str, Any]] = field(default_factory=list)
    object_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "object_key": self.object_key,
        }


def ingest_json_records(
    pipeline: PipelineConfig, records: list[Any], lander: Lander, *, request_id: str | None = None
) -> BatchResult:
    """Validate each record; land the good ones as one Parquet object, dead-letter the others."""
    request_id = request_id or uuid.uuid4().hex
    stream = pipeline.stream
    now = datetime.now(tz=UTC)
    good: list[dict[str, Any]] = []
    result = BatchResult(request_id=request_id, accepted=0)
    for index, raw in enumerate(records):
        row, rejection = validate_json(raw, pipeline, now)
        if rejection is None:
            assert row is not None
            good.append(row)
            continue
        lander.dead_letter(stream.name, rejection, f"http:{request_id}/{index}", json_bytes(raw))
        result.rejected.append(
            {"index": index, "reason": rejection.reason, "field": rejection.field, "message": rejection.message}
        )
    if good:
        key = landed_http_key(stream.name, request_id)
        lander.land(stream, good, key, f"http:{request_id}")
        result.object_key = key
    result.accepted = len(good)
    lander.bus.flush()
    return result


IDEMPOTENCY_KEY_MAX = 200


class IdempotencyKeyReused(InvalidRequest):
    """The same Idempotency-Key came with a different body (HTTP 422)."""

    default_code = "idempotency_key_reused"


_key_locks: dict[tuple[str, str], threading.Lock] = {}
_key_locks_guard = threading.Lock()


def idempotent_request_id(stream: str, key: str) -> str:
    """The request id of a batch sent with an Idempotency-Key: derived from the key, so that a retry lands under
    the same object name and dead-letters under the same sources even after a crash of the first attempt."""
    return "idem-" + hashlib.sha256(f"{stream}\0{key}".encode()).hexdigest()[:32]


def ingest_idempotent(
    pipeline: PipelineConfig, records: list[Any], lander: Lander, *, key: str, body: bytes
) -> dict[str, Any]:
    """``ingest_json_records`` once per (stream, key): a retry with the same body gets the first answer back
    (with ``"replayed": true``) and lands nothing; the same key with another body is refused."""
    stream = pipeline.stream.name
    body_sha256 = hashlib.sha256(body).hexdigest()
    with _key_locks_guard:
        lock = _key_locks.setdefault((stream, key), threading.Lock())
    with lock:
        with lander.Session() as session:
            seen = session.get(IngestionIdempotencyKey, (stream, key))
        if seen is not None:
            if seen.body_sha256 != body_sha256:
                raise IdempotencyKeyReused(
                    f"Idempotency-Key {key!r} was used before for a different body on stream {stream!r}; "
                    "use a new key for a new batch"
                )
            return {**seen.response, "replayed": True}
        result = ingest_json_records(pipeline, records, lander, request_id=idempotent_request_id(stream, key))
        response = {**result.to_dict(), "idempotency_key": key}
        try:
            with lander.Session.begin() as session:
                session.add(IngestionIdempotencyKey(stream=stream, key=key, body_sha256=body_sha256, response=response))
        except sa.exc.IntegrityError:
            pass  # another process answered the same key meanwhile; landing was idempotent by request id
        return {**response, "replayed": False}


def freshness(lander: Lander, stream: str, max_age_seconds: int) -> dict[str, Any]:
    """The newest landed event time and its age; ``fresh`` is None without a rule (``dataset.freshness_seconds``)."""
    with lander.Session() as session:
        newest = session.scalar(sa.select(sa.func.max(LandedBatch.max_event_time)).where(LandedBatch.stream == stream))
    if newest is not None and newest.tzinfo is None:
        newest = newest.replace(tzinfo=UTC)  # SQLite: naive UTC
    age = (datetime.now(tz=UTC) - newest).total_seconds() if newest is not None else None
    fresh = None if not max_age_seconds else (age is not None and age <= max_age_seconds)
    return {
        "newest_event_time": newest.isoformat() if newest else None,
        "age_seconds": round(age, 3) if age is not None else None,
        "max_age_seconds": max_age_seconds or None,
        "fresh": fresh,
    }


def stream_stats(lander: Lander, stream: str, pending: int = 0, replay_skipped: int = 0) -> dict[str, Any]:
    """Counts from the database (the record of truth), with what this process holds: records_in = landed + open
    dead letters + pending + replay_skipped (records received again that had landed before, since the start)."""
    with lander.Session() as session:
        landed = int(
            session.scalar(
                sa.select(sa.func.coalesce(sa.func.sum(LandedBatch.rows), 0)).where(LandedBatch.stream == stream)
            )
            or 0
        )
        batches = int(session.scalar(sa.select(sa.func.count()).where(LandedBatch.stream == stream)) or 0)
        unversioned = int(
            session.scalar(
                sa.select(sa.func.coalesce(sa.func.sum(LandedBatch.rows), 0)).where(
                    LandedBatch.stream == stream, LandedBatch.dataset_version_id.is_(None)
                )
            )
            or 0
        )
    dlq = dead_letter_counts(lander, stream)
    by_reason, dead = dlq["by_reason"], dlq["open"]
    return {
        "stream": stream,
        "records_in": landed + dead + pending + replay_skipped,
        "landed": landed,
        "landed_batches": batches,
        "dead_lettered": dead,
        "pending": pending,
        "replay_skipped": replay_skipped,
        "unversioned_rows": unversioned,
        "by_reason": by_reason,
        # Dead letters replayed since: their records are counted in `landed` now.
        "replayed_dead_letters": dlq["replayed"],
    }
