"""Streaming features: per-entity running aggregates kept current in the online store, record by record.

State lives in the database, not in a faust Table (Tables do not recover correctly on every broker): each
applied record goes into ``feature_stream_events`` keyed by its source offset (``topic/partition/offset``), so a
redelivered record is applied once, and the entity's aggregates are recomputed from the stored records of its
longest window. The values follow the offline definition exactly (``materialize.aggregate_values``): as of the
entity's newest event time t, over the records with event time in ``(t - window, t]``; ``last`` is the newest
non-null value, peers at one instant ordered by value. So the online value at event time t equals the offline
store's value at t.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from driftloop.clients.db.models import FeatureStreamEvent
from driftloop.contracts.featuredefs import compute_features
from driftloop.contracts.pipeline import FeatureSpec, PipelineConfig

from .onlinestore import OnlineStore, _insert_for

log = logging.getLogger(__name__)


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return _utc(value).isoformat()
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def aggregate_as_of(feature: FeatureSpec, events: list[tuple[datetime, dict[str, Any]]], at: datetime) -> Any:
    """One aggregate feature over ``events`` (event time, fields) with event time in ``(at - window, at]``."""
    start = at - timedelta(seconds=feature.window_seconds or 0)
    inside = [(t, f) for t, f in events if start < t <= at]
    if feature.aggregate == "count":
        if feature.source is None:
            return float(len(inside))
        return float(sum(1 for _, f in inside if f.get(feature.source) is not None))
    source = feature.source
    if source is None:  # only a count goes without a source (the pipeline config checks it)
        return None
    if feature.aggregate == "last":
        to_text = feature.kind == "categorical"
        present = [(t, str(v) if to_text else float(v)) for t, f in inside if (v := f.get(source)) is not None]
        return max(present)[1] if present else None
    values = [float(v) for _, f in inside if (v := f.get(source)) is not None]
    if not values:
        return None
    if feature.aggregate == "sum":
        return float(sum(values))
    if feature.aggregate == "mean":
        return float(sum(values) / len(values))
    return float(min(values) if feature.aggregate == "min" else max(values))


class StreamAggregator:
    """Applies decoded stream records of one pipeline to the online store."""

    def __init__(self, engine: sa.Engine, pipeline: PipelineConfig, online: OnlineStore) -> None:
        self.engine = engine
        self.pipeline = pipeline
        self.online = online
        self._insert = _insert_for(engine)
        windows = [f.window_seconds or 0 for f in pipeline.aggregate_features]
        self.keep = timedelta(seconds=max(windows, default=0))
        self.applied = 0
        self.skipped = 0

    def apply(self, records: Iterable[tuple[str, dict[str, Any]]]) -> int:
        """Apply (event id, record) pairs; returns how many entities were written online. Records without entity
        key or event time are skipped (ingestion dead-letters them)."""
        stream = self.pipeline.stream
        rows: list[dict[str, Any]] = []
        for event_id, record in records:
            entity, event_time = record.get(stream.entity_key), record.get(stream.event_time)
            if entity is None or not isinstance(event_time, datetime):
                self.skipped += 1
                continue
            rows.append(
                {
                    "stream": stream.name,
                    "event_id": event_id,
                    "entity": str(entity),
                    "event_time": _utc(event_time),
                    "fields": {k: _plain(v) for k, v in record.items()},
                }
            )
        if not rows:
            return 0
        table = FeatureStreamEvent.__table__
        entities = sorted({r["entity"] for r in rows})
        online_rows = []
        with self.engine.begin() as conn:
            # A redelivered record (same offset) is not stored twice: the recompute below gives the same values.
            conn.execute(self._insert(table).values(rows).on_conflict_do_nothing())
            for entity in entities:
                online_rows.append(self._recompute(conn, entity))
        self.applied += len(rows)
        return self.online.write([r for r in online_rows if r is not None])

    def _recompute(self, conn: sa.Connection, entity: str) -> dict[str, Any] | None:
        stream = self.pipeline.stream
        table = FeatureStreamEvent.__table__
        mine = sa.and_(table.c.stream == stream.name, table.c.entity == entity)
        newest = conn.execute(sa.select(sa.func.max(table.c.event_time)).where(mine)).scalar_one()
        if newest is None:
            return None
        newest = _utc(newest)
        # Older records can no longer fall inside any window of this entity's future values.
        expired = sa.and_(table.c.event_time <= newest - self.keep, table.c.event_time < newest)
        conn.execute(sa.delete(FeatureStreamEvent).where(mine, expired))
        stored = conn.execute(
            sa.select(table.c.event_id, table.c.event_time, table.c.fields).where(mine).order_by(table.c.event_time)
        ).all()
        events = [(_utc(t), fields) for _, t, fields in stored]
        # Row features (pass-through, derived) of the newest record; among peers the highest offset.
        latest_fields = max(((i, f) for (i, t, f) in stored if _utc(t) == newest), key=lambda p: _offset_key(p[0]))[1]
        frame = pd.DataFrame([latest_fields])
        row = compute_features(frame, self.pipeline, keep_keys=False)
        values: dict[str, Any] = {}
        for feature in self.pipeline.features:
            if feature.aggregate is not None:
                values[feature.name] = aggregate_as_of(feature, events, newest)
            else:
                value = row[feature.name].iloc[0]
                if feature.kind == "numeric":
                    value = None if value is None or not np.isfinite(value) else float(value)
                else:
                    value = None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
                values[feature.name] = value
        return {
            "stream": stream.name,
            "entity": entity,
            "values": values,
            "event_time": newest,
            "updated_at": datetime.now(tz=UTC),
        }


def _offset_key(event_id: str) -> tuple[str, int, int]:
    topic, _, rest = event_id.rpartition("/")
    topic, _, partition = topic.rpartition("/")
    try:
        return (topic, int(partition), int(rest))
    except ValueError:
        return (event_id, 0, 0)
