"""The dead-letter queue of a stream: list with counts by reason, and replay once the cause is fixed.

A replay re-validates each selected dead letter against the stream's *current* pipeline config: its original
bytes as they came (Avro read with the current reader schema, or JSON), or a corrected record supplied with the
replay (``fixes``: dead-letter id -> JSON record). Records that pass land together as one batch whose object name
derives from the replayed ids, and the dead letters are marked replayed into it; records that still fail stay
in the queue with their new reason. Counting stays exact: records in = landed + open dead letters.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from driftloop.clients.db.models import DeadLetter
from driftloop.contracts.pipeline import PipelineConfig

from .decoding import decode_record
from .landing import Lander
from .validation import validate_json

MAX_REPLAY = 10_000


def _utc_iso(value: datetime | None) -> str | None:
    # SQLite hands back naive datetimes: they are UTC.
    return value.replace(tzinfo=value.tzinfo or UTC).isoformat() if value else None


def dead_letter_to_dict(row: DeadLetter, with_original: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": row.id,
        "reason": row.reason,
        "field": row.field,
        "message": row.message,
        "source": row.source,
        "schema_id": row.schema_id,
        "event_id": row.event_id,
        "created_at": _utc_iso(row.created_at),
        "replayed_into": row.replayed_into,
        "replayed_at": _utc_iso(row.replayed_at),
    }
    if with_original:
        entry["original_base64"] = base64.b64encode(row.original).decode() if row.original is not None else None
    return entry


def counts(lander: Lander, stream: str) -> dict[str, Any]:
    """Open dead letters by reason, and how many were replayed."""
    with lander.Session() as session:
        open_by_reason = {
            reason: int(n)
            for reason, n in session.execute(
                sa.select(DeadLetter.reason, sa.func.count())
                .where(DeadLetter.stream == stream, DeadLetter.replayed_into.is_(None))
                .group_by(DeadLetter.reason)
            )
        }
        replayed = int(
            session.scalar(
                sa.select(sa.func.count()).where(DeadLetter.stream == stream, DeadLetter.replayed_into.is_not(None))
            )
            or 0
        )
    return {
        "open": sum(open_by_reason.values()),
        "by_reason": dict(sorted(open_by_reason.items())),
        "replayed": replayed,
    }


def list_dead_letters(
    lander: Lander,
    stream: str,
    *,
    limit: int = 100,
    reason: str | None = None,
    include_replayed: bool = False,
    with_original: bool = False,
) -> list[dict[str, Any]]:
    query = sa.select(DeadLetter).where(DeadLetter.stream == stream)
    if reason:
        query = query.where(DeadLetter.reason == reason)
    if not include_replayed:
        query = query.where(DeadLetter.replayed_into.is_(None))
    with lander.Session() as session:
        rows = session.scalars(query.order_by(DeadLetter.id.desc()).limit(limit)).all()
    return [dead_letter_to_dict(r, with_original) for r in rows]


@dataclass
class ReplayResult:
    selected: int = 0
    replayed: list[int] = field(default_factory=list)
    still_failing: list[dict[str, Any]] = field(default_factory=list)
    object_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "selected": self.selected,
            "replayed": len(self.replayed),
            "replayed_ids": self.replayed,
            "still_failing": self.still_failing,
            "object_key": self.object_key,
        }


def replay_key(stream: str, ids: list[int]) -> str:
    digest = hashlib.sha256(",".join(map(str, sorted(ids))).encode()).hexdigest()[:32]
    return f"landed/{stream}/replay-{digest}.parquet"


def _revalidate(
    row: DeadLetter, pipeline: PipelineConfig, lander: Lander, fix: Any | None, now: datetime
) -> tuple[dict[str, Any] | None, str, str]:
    """(typed record or None, reason, message) for one dead letter under the current config."""
    if fix is not None:
        record, rejection = validate_json(fix, pipeline, now)
    elif row.original is None:
        return None, "no_original", "this dead letter predates stored originals: replay it with a fix"
    elif row.source.startswith("kafka:"):
        # The intake's own per-record decoding: a poison original is refused with its reason, never a 500.
        record, rejection = decode_record(lander.bus.codec, row.original, pipeline.stream.avro_schema(), pipeline, now)
    else:
        try:
            raw = json.loads(row.original)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return None, "not_json", f"the original is not JSON: {exc}"
        record, rejection = validate_json(raw, pipeline, now)
    if rejection is not None:
        return None, rejection.reason, rejection.message
    return record, "", ""


def replay(
    pipeline: PipelineConfig,
    lander: Lander,
    *,
    ids: list[int] | None = None,
    reason: str | None = None,
    fixes: dict[int, Any] | None = None,
) -> ReplayResult:
    """Replay the open dead letters selected by ``ids`` and/or ``reason`` (all open ones if neither is given,
    at most MAX_REPLAY); ``fixes`` replaces a dead letter's original by a corrected JSON record."""
    stream = pipeline.stream
    fixes = fixes or {}
    query = sa.select(DeadLetter).where(DeadLetter.stream == stream.name, DeadLetter.replayed_into.is_(None))
    if ids:
        query = query.where(DeadLetter.id.in_(ids))
    if reason:
        query = query.where(DeadLetter.reason == reason)
    with lander.Session() as session:
        rows = session.scalars(query.order_by(DeadLetter.id).limit(MAX_REPLAY)).all()
    result = ReplayResult(selected=len(rows))
    now = datetime.now(tz=UTC)
    good: list[dict[str, Any]] = []
    for row in rows:
        record, why, message = _revalidate(row, pipeline, lander, fixes.get(row.id), now)
        if record is None:
            result.still_failing.append({"id": row.id, "reason": why, "message": message})
        else:
            good.append(record)
            result.replayed.append(row.id)
    if not good:
        return result
    key = replay_key(stream.name, result.replayed)
    # The key derives from the ids: replaying again after a crash between these two steps lands nothing twice.
    lander.land(stream, good, key, f"replay:dead-letters/{','.join(map(str, result.replayed))}"[:500])
    with lander.Session.begin() as session:
        session.execute(
            sa.update(DeadLetter)
            .where(DeadLetter.id.in_(result.replayed))
            .values(replayed_into=key, replayed_at=datetime.now(tz=UTC))
        )
    result.object_key = key
    return result
