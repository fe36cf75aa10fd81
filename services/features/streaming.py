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
        mine = sa.and_(table.c.stream == stream.name, table.c.entity.in_(entities))
        # The write transaction holds only SQL: on SQLite its lock is the whole database's, which every other
        # service's writes wait for (a recompute inside it held it for seconds while a stream arrived).
        with self.engine.begin() as conn:
            # A redelivered record (same offset) is not stored twice: the recompute below gives the same values.
            conn.execute(self._insert(table).values(rows).on_conflict_do_nothing())
            newest = conn.execute(
                sa.select(table.c.entity, sa.func.max(table.c.event_time)).where(mine).group_by(table.c.entity)
            ).all()
            for entity, entity_newest in newest:
                entity_newest = _utc(entity_newest)
                # Older records can no longer fall inside any window of this entity's future values.
                expired = sa.and_(table.c.event_time <= entity_newest - self.keep, table.c.event_time < entity_newest)
                conn.execute(
                    sa.delete(FeatureStreamEvent).where(
                        table.c.stream == stream.name, table.c.entity == entity, expired
                    )
                )
        with self.engine.connect() as conn:
            stored = conn.execute(
                sa.select(table.c.entity, table.c.event_id, table.c.event_time, table.c.fields)
                .where(mine)
                .order_by(table.c.entity, table.c.event_time)
            ).all()
        by_entity: dict[str, list[tuple[str, datetime, dict[str, Any]]]] = {}
        for entity, event_id, event_time, fields in stored:
            by_entity.setdefault(entity, []).append((event_id, _utc(event_time), fields))
        self.applied += len(rows)
        return self.online.write(self._online_rows(by_entity))

    def _online_rows(self, by_entity: dict[str, list[tuple[str, datetime, dict[str, Any]]]]) -> list[dict[str, Any]]:
        """Each entity's values as of its newest event time, from its stored records (event id, time, fields)."""
        stream = self.pipeline.stream
        newest: dict[str, datetime] = {}
        latest: dict[str, dict[str, Any]] = {}
        for entity, stored in by_entity.items():
            newest[entity] = max(t for _, t, _ in stored)
            # Row features (pass-through, derived) of the newest record; among peers the highest offset.
            latest[entity] = max(
                ((i, f) for (i, t, f) in stored if t == newest[entity]), key=lambda p: _offset_key(p[0])
            )[1]
        row_values = self._row_features(latest)
        now = datetime.now(tz=UTC)
        online_rows = []
        for entity, stored in by_entity.items():
            events = [(t, fields) for _, t, fields in stored]
            values: dict[str, Any] = {}
            for feature in self.pipeline.features:
                if feature.aggregate is not None:
                    values[feature.name] = aggregate_as_of(feature, events, newest[entity])
                else:
                    values[feature.name] = row_values[entity][feature.name]
            online_rows.append(
                {
                    "stream": stream.name,
                    "entity": entity,
                    "values": values,
                    "event_time": newest[entity],
                    "updated_at": now,
                }
            )
        return online_rows

    def _row_features(self, latest: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The row features of each entity's newest record. Records whose fields have the same names and value
        types are computed in one frame (a frame infers each column's dtype from its values: mixing, say, an int
        with a missing value would turn the int into a float), so each value is what its record alone gives."""
        groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
        for entity, fields in latest.items():
            groups.setdefault(tuple(sorted((k, type(v).__name__) for k, v in fields.items())), []).append(entity)
        out: dict[str, dict[str, Any]] = {}
        row_features = [f for f in self.pipeline.features if f.aggregate is None]
        for members in groups.values():
            frame = pd.DataFrame([latest[e] for e in members])
            computed = compute_features(frame, self.pipeline, keep_keys=False)
            for position, entity in enumerate(members):
                values: dict[str, Any] = {}
                for feature in row_features:
                    value = computed[feature.name].iloc[position]
                    if feature.kind == "numeric":
                        value = None if value is None or not np.isfinite(value) else float(value)
                    else:
                        value = None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
                    values[feature.name] = value
                out[entity] = values
        return out


def _offset_key(event_id: str) -> tuple[str, int, int]:
    topic, _, rest = event_id.rpartition("/")
    topic, _, partition = topic.rpartition("/")
    try:
        return (topic, int(partition), int(rest))
    except ValueError:
        return (event_id, 0, 0)
