"""The online store: latest feature values per (stream, entity), behind the ``OnlineStore`` interface.

The type is chosen by ``settings.features.online_store`` (a string): ``"database"`` is the ``online_features``
table; ``"redis"`` is one Redis hash per (stream, entity) holding the values, event time and write time
(``settings.features.redis``). Another backend is a class with the same two methods, registered in
``ONLINE_STORE_TYPES``.

Writes only move an entity forward in event time, so replaying an older dataset version or a late record never
overwrites newer values. Each entity carries its freshness: the event time its values are as of, and when they
were written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import sqlalchemy as sa

from driftloop.clients.db.models import OnlineFeatures
from driftloop.contracts.settings import RedisOnlineStoreSettings, Settings
from driftloop.errors import ConfigError, OnlineStoreUnavailable

if TYPE_CHECKING:
    import redis

UPSERT_BATCH_ROWS = 500


class OnlineValue(NamedTuple):
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

    def available(self) -> bool:
        """Whether the store answers now (the features service's /healthz check ``online_store``)."""
        ...


def _insert_for(engine: sa.Engine) -> Any:
    dialect = engine.dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert
    raise ConfigError(f"the online store supports SQLite and PostgreSQL databases, not {dialect!r}")


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
        self._mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        # The JSON column as text: parsed with the rest of the answer, not by the driver row by row.
        self._values_text = '"values"::text' if engine.dialect.name == "postgresql" else '"values"'
        self._selects: dict[int, str] = {}

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
        # One statement per 500 entities on a raw driver cursor: the rows come back as the driver's tuples, with
        # no per-row type processing (SQLAlchemy's JSON and DateTime result processors were most of a lookup's
        # time); every JSON document of the answer is parsed in one call.
        wanted = list(dict.fromkeys(entities))
        rows: list[tuple[Any, ...]] = []
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                for start in range(0, len(wanted), UPSERT_BATCH_ROWS):
                    chunk = wanted[start : start + UPSERT_BATCH_ROWS]
                    cursor.execute(self._select(len(chunk)), (stream, *chunk))
                    rows += cursor.fetchall()
            finally:
                cursor.close()
            raw.rollback()  # end the read transaction (PostgreSQL) before the connection goes back to the pool
        finally:
            raw.close()
        if not rows:
            return {}
        documents = json.loads("[" + ",".join(row[1] for row in rows) + "]")
        # Rows written together share their times: each distinct one is parsed once per lookup.
        times: dict[Any, datetime | None] = {None: None}

        def to_time(value: datetime | str | None) -> datetime | None:
            parsed = times.get(value, times)
            if parsed is times:
                parsed = times[value] = self._time(value)
            return parsed  # type: ignore[return-value]

        return {
            row[0]: OnlineValue(values, to_time(row[2]), to_time(row[3]))
            for row, values in zip(rows, documents, strict=True)
        }

    def _select(self, count: int) -> str:
        """The lookup of ``count`` entities in the driver's parameter style (cached per count)."""
        statement = self._selects.get(count)
        if statement is None:
            mark = self._mark
            statement = (
                f"SELECT entity, {self._values_text}, event_time, updated_at FROM {OnlineFeatures.__tablename__} "
                f"WHERE stream = {mark} AND entity IN ({', '.join([mark] * count)})"
            )
            self._selects[count] = statement
        return statement

    @staticmethod
    def _time(value: datetime | str | None) -> datetime | None:
        # PostgreSQL's driver hands back aware datetimes; SQLite stores the UTC wall time as text.
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)

    def available(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError:
            return False
        return True


# Hash fields of the entity's freshness; '@' cannot start a feature name, so they never meet a feature's field.
EVENT_TIME_FIELD = "@event_time"
UPDATED_AT_FIELD = "@updated_at"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# KEYS[1]: the entity's hash. ARGV: event time (epoch microseconds, '' for none), TTL seconds ('' for none), then
# field/value pairs (freshness fields included). The same rule as the database's upsert, atomically: an older
# event time never replaces a newer one; equal replaces (idempotent); a missing time on either side replaces.
# The hash is replaced as a whole, so a feature dropped from the values does not linger.
_WRITE_IF_NOT_OLDER = """
local current = redis.call('HGET', KEYS[1], '@event_time')
if current and current ~= '' and ARGV[1] ~= '' and tonumber(current) > tonumber(ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
if ARGV[2] ~= '' then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 1
"""


# KEYS: the entities' hashes. One call (one round trip, one reply) instead of a command per entity; a missing key
# reads as an empty hash.
_READ_MANY = """
local found = {}
for i, key in ipairs(KEYS) do
  found[i] = redis.call('HGETALL', key)
end
return found
"""


def _micros(value: datetime | None) -> str:
    """Epoch microseconds (exact in Lua's doubles until the year 2255), '' for no time."""
    if value is None:
        return ""
    return str((_utc(value) - EPOCH) // timedelta(microseconds=1))  # type: ignore[operator]


def _from_micros(text: str | None) -> datetime | None:
    return None if not text else EPOCH + timedelta(microseconds=int(text))


def redis_url(config: RedisOnlineStoreSettings) -> str:
    """The URL the store connects to, without its password (for messages)."""
    if config.url:
        from urllib.parse import urlsplit

        parts = urlsplit(config.url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return parts._replace(netloc=netloc).geturl()
    return f"redis://{config.host}:{config.port}/{config.db}"


class RedisOnlineStore:
    """One Redis hash per (stream, entity) at ``<key_prefix><stream>:<entity>`` (stream names hold no ':'):
    each feature's value as JSON (so numbers, strings and nulls come back as they went in) plus ``@event_time``
    and ``@updated_at`` (epoch microseconds, UTC). Writes go through a Lua script (atomic compare-and-replace on
    the event time) in pipelined batches; a read is one script call per 500 entities (``HGETALL`` each)."""

    def __init__(self, config: RedisOnlineStoreSettings, client: redis.Redis | None = None) -> None:
        import redis
        from redis.backoff import ExponentialWithJitterBackoff
        from redis.retry import Retry

        self.config = config
        self.prefix = config.key_prefix
        self.ttl = "" if config.ttl_seconds is None else str(config.ttl_seconds)
        options: dict[str, Any] = {
            "socket_timeout": config.timeout_seconds,
            "socket_connect_timeout": config.timeout_seconds,
            "decode_responses": True,
            # A blip is retried briefly; a Redis that is gone answers a lookup with a 503 within about a second
            # (the client's default, 10 retries, would hold each lookup for seconds).
            "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=3),
        }
        if client is not None:
            self.client = client
        elif config.url:
            try:
                self.client = redis.Redis.from_url(config.url, **options)
            except ValueError as exc:
                raise ConfigError(f"features.redis.url {redis_url(config)!r} is not a Redis URL: {exc}") from None
        else:
            password = config.password.get_secret_value() or None
            self.client = redis.Redis(host=config.host, port=config.port, db=config.db, password=password, **options)
        self._write_script = self.client.register_script(_WRITE_IF_NOT_OLDER)
        self._read_script = self.client.register_script(_READ_MANY)
        self._check()

    def _unavailable(self, exc: Exception) -> OnlineStoreUnavailable:
        return OnlineStoreUnavailable(
            f"the Redis online store at {redis_url(self.config)} does not answer ({exc}): start Redis there, or point "
            "features.redis.url (DRIFTLOOP_FEATURES__REDIS__URL) or features.redis.host/port at a running one"
        )

    def _check(self) -> None:
        """Fail at startup, with what to fix, rather than on the first lookup."""
        import redis

        try:
            self.client.ping()
        except redis.AuthenticationError as exc:
            raise ConfigError(
                f"the Redis online store at {redis_url(self.config)} refused the password ({exc}): set "
                "features.redis.password (DRIFTLOOP_FEATURES__REDIS__PASSWORD) or the password in features.redis.url"
            ) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ConfigError(str(self._unavailable(exc))) from None
        except redis.ResponseError as exc:  # e.g. a db index the server does not have
            raise ConfigError(f"the Redis online store at {redis_url(self.config)}: {exc} (features.redis)") from None

    def key(self, stream: str, entity: str) -> str:
        return f"{self.prefix}{stream}:{entity}"

    def write(self, rows: list[dict[str, Any]]) -> int:
        import redis

        if not rows:
            return 0
        try:
            for start in range(0, len(rows), UPSERT_BATCH_ROWS):
                pipe = self.client.pipeline(transaction=False)
                for row in rows[start : start + UPSERT_BATCH_ROWS]:
                    fields: list[str] = [
                        EVENT_TIME_FIELD,
                        _micros(row.get("event_time")),
                        UPDATED_AT_FIELD,
                        _micros(row.get("updated_at")),
                    ]
                    for name, value in (row.get("values") or {}).items():
                        fields += [name, json.dumps(value)]
                    args = [fields[1], self.ttl, *fields]
                    self._write_script(keys=[self.key(row["stream"], row["entity"])], args=args, client=pipe)
                pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unavailable(exc) from None
        return len(rows)

    def read(self, stream: str, entities: Iterable[str]) -> dict[str, OnlineValue]:
        import redis

        wanted = list(dict.fromkeys(entities))
        found: dict[str, OnlineValue] = {}
        try:
            for start in range(0, len(wanted), UPSERT_BATCH_ROWS):
                chunk = wanted[start : start + UPSERT_BATCH_ROWS]
                replies = self._read_script(keys=[self.key(stream, entity) for entity in chunk])
                held = [
                    (entity, dict(zip(flat[::2], flat[1::2], strict=True)))
                    for entity, flat in zip(chunk, replies, strict=True)
                    if flat  # an empty reply: no such entity
                ]
                freshness = [(h.pop(EVENT_TIME_FIELD, None), h.pop(UPDATED_AT_FIELD, None)) for _, h in held]
                # Every value of the chunk in one JSON array: one parse, not one per feature and entity.
                decoded = iter(json.loads("[" + ",".join(t for _, h in held for t in h.values()) + "]"))
                for (entity, stored), (event_time, updated_at) in zip(held, freshness, strict=True):
                    values = {name: next(decoded) for name in stored}
                    found[entity] = OnlineValue(values, _from_micros(event_time), _from_micros(updated_at))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unavailable(exc) from None
        return found

    def available(self) -> bool:
        import redis

        try:
            return bool(self.client.ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    def close(self) -> None:
        self.client.close()


# type string -> factory(settings, engine).
ONLINE_STORE_TYPES: dict[str, Callable[[Settings, sa.Engine], OnlineStore]] = {
    "database": lambda _settings, engine: DatabaseOnlineStore(engine),
    "redis": lambda settings, _engine: RedisOnlineStore(settings.features.redis),
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
