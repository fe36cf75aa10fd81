"""The online store: latest feature values per (stream, entity), behind the ``OnlineStore`` interface.

The type is chosen by ``settings.features.online_store`` (a string): ``"database"`` is the ``online_features``
table. Another backend (Redis: a hash per entity holding values, event time and write time) is a class with the
same two methods, registered in ``ONLINE_STORE_TYPES``.

Writes only move an entity forward in event time, so replaying an older dataset version or a late record never
overwrites newer values. Each entity carries its freshness: the event time its values are as of, and when they
were written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa

from driftloop.db.models import OnlineFeatures
from driftloop.errors import ConfigError
from driftloop.settings import Settings

UPSERT_BATCH_ROWS = 500


@dataclass(frozen=True)
class OnlineValue:
    values: dict[str, Any]
    event_time: datetime | None
    updated_at: datetime | None


class OnlineStore(Protocol):
    def write(self, rows: list[dict[str, Any]]) -> int:
        """Insert or update rows (keys: stream, entity, values, event_time, updated_at). Returns rows sent."""
        ...

    def read(self, stream: str, entities: Iterable[str]) -> dict[str, OnlineValue]:
        """The entities found, with their values and freshness."""
        ...


def _insert_for(engine: sa.Engine) -> Any:
    dialect = engine.dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        raise ConfigError(f"the online store supports SQLite and PostgreSQL databases, not {dialect!r}")
    return insert


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    # SQLite hands back naive datetimes: every stored time is UTC.
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


class DatabaseOnlineStore:
    """The ``online_features`` table. Upserts use ``INSERT ... ON CONFLICT DO UPDATE`` (SQLite and PostgreSQL
    share the syntax), guarded so that only a newer or equal event time replaces a row."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._insert = _insert_for(engine)

    def write(self, rows: list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        table = OnlineFeatures.__table__
        with self.engine.begin() as conn:
            for start in range(0, len(rows), UPSERT_BATCH_ROWS):
                stmt = self._insert(table).values(rows[start : start + UPSERT_BATCH_ROWS])
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

    def read(self, stream: str, entities: Iterable[str]) -> dict[str, OnlineValue]:
        wanted = list(dict.fromkeys(entities))
        found: dict[str, OnlineValue] = {}
        columns = (OnlineFeatures.entity, OnlineFeatures.values, OnlineFeatures.event_time, OnlineFeatures.updated_at)
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), UPSERT_BATCH_ROWS):
                chunk = wanted[start : start + UPSERT_BATCH_ROWS]
                query = sa.select(*columns).where(OnlineFeatures.stream == stream, OnlineFeatures.entity.in_(chunk))
                for entity, values, event_time, updated_at in conn.execute(query):
                    found[entity] = OnlineValue(values, _utc(event_time), _utc(updated_at))
        return found


# type string -> factory(settings, engine). Add "redis" here with a class implementing OnlineStore.
ONLINE_STORE_TYPES: dict[str, Callable[[Settings, sa.Engine], OnlineStore]] = {
    "database": lambda _settings, engine: DatabaseOnlineStore(engine),
}


def open_online_store(settings: Settings, engine: sa.Engine) -> OnlineStore:
    kind = settings.features.online_store
    try:
        factory = ONLINE_STORE_TYPES[kind]
    except KeyError:
        raise ConfigError(
            f"features.online_store {kind!r} is not a known online store type; known: {sorted(ONLINE_STORE_TYPES)}"
        ) from None
    return factory(settings, engine)


def upsert_online(engine: sa.Engine, rows: list[dict[str, Any]]) -> int:
    """Write rows to the database online store (see ``DatabaseOnlineStore.write``)."""
    return DatabaseOnlineStore(engine).write(rows)


def _iso_utc(value: datetime | None) -> str | None:
    return None if value is None else _utc(value).isoformat()  # type: ignore[union-attr]


def lookup_online(engine: sa.Engine, stream: str, entities: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Latest values of the entities found in the database store, each with its ``event_time`` (ISO, UTC)."""
    found = DatabaseOnlineStore(engine).read(stream, entities)
    return {entity: {**v.values, "event_time": _iso_utc(v.event_time)} for entity, v in found.items()}
