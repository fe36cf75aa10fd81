"""The online store: latest feature values per (stream, entity) in the ``online_features`` table.

Upserts use the dialect's ``INSERT ... ON CONFLICT DO UPDATE`` (SQLite and PostgreSQL share the syntax) and only
move an entity forward in event time, so replaying an older dataset version never overwrites newer values.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from driftloop.db.models import OnlineFeatures
from driftloop.errors import ConfigError

UPSERT_BATCH_ROWS = 500


def _insert_for(engine: sa.Engine) -> Any:
    dialect = engine.dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        raise ConfigError(f"the online store supports SQLite and PostgreSQL databases, not {dialect!r}")
    return insert


def upsert_online(engine: sa.Engine, rows: list[dict[str, Any]]) -> int:
    """Insert or update online rows (keys: stream, entity, values, event_time, updated_at). Returns rows sent."""
    if not rows:
        return 0
    insert = _insert_for(engine)
    table = OnlineFeatures.__table__
    with engine.begin() as conn:
        for start in range(0, len(rows), UPSERT_BATCH_ROWS):
            stmt = insert(table).values(rows[start : start + UPSERT_BATCH_ROWS])
            excluded = stmt.excluded
            stmt = stmt.on_conflict_do_update(
                index_elements=[table.c.stream, table.c.entity],
                set_={
                    "values": excluded["values"],
                    "event_time": excluded["event_time"],
                    "updated_at": excluded["updated_at"],
                },
                where=sa.or_(
                    table.c.event_time.is_(None),
                    excluded["event_time"].is_(None),
                    table.c.event_time <= excluded["event_time"],
                ),
            )
            conn.execute(stmt)
    return len(rows)


def _iso_utc(value: datetime | None) -> str | None:
    if value is None:
        return None
    # SQLite hands back naive datetimes: every stored time is UTC.
    return (value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def lookup_online(engine: sa.Engine, stream: str, entities: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Latest values of the entities found, each with its ``event_time`` (ISO 8601, UTC)."""
    wanted = list(dict.fromkeys(entities))
    found: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        for start in range(0, len(wanted), UPSERT_BATCH_ROWS):
            chunk = wanted[start : start + UPSERT_BATCH_ROWS]
            query = sa.select(OnlineFeatures.entity, OnlineFeatures.values, OnlineFeatures.event_time).where(
                OnlineFeatures.stream == stream, OnlineFeatures.entity.in_(chunk)
            )
            for entity, values, event_time in conn.execute(query):
                found[entity] = {**values, "event_time": _iso_utc(event_time)}
    return found
