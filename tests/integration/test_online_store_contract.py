"""The online store contract, run unchanged against every backend: the database store on SQLite and on a real
PostgreSQL, and the Redis store on a real redis-server. Then what only Redis has: its key layout, TTL and the
errors when the server is not there (at startup: a ConfigError naming the setting; later: 503 from the API)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from driftloop.clients.db import create_engine_for, migrate
from driftloop.clients.db.engine import session_factory
from driftloop.contracts.pipeline import load_pipeline
from driftloop.contracts.settings import Settings
from driftloop.errors import ConfigError
from driftloop.ops.procs import free_port, port_open, spawn, stop_pid, wait_until
from driftloop.runtime.service import base_app
from driftloop.services.features import api
from driftloop.services.features.onlinestore import (
    UPSERT_BATCH_ROWS,
    OnlineStore,
    OnlineStoreUnavailable,
    RedisOnlineStore,
    open_online_store,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[OnlineStore]:
    """A fresh online store of each type, opened the way the service opens it (``open_online_store``)."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_server")
        settings = Settings(home=tmp_path, features={"online_store": "redis", "redis": {"url": url}})
        database_url = f"sqlite:///{tmp_path}/unused.db"
    else:
        database_url = (
            request.getfixturevalue("postgres_url") if request.param == "postgresql" else f"sqlite:///{tmp_path}/o.db"
        )
        settings = Settings(home=tmp_path, database={"url": database_url})
        migrate(database_url)
    engine = create_engine_for(database_url)
    yield open_online_store(settings, engine)
    engine.dispose()


def row(stream: str, entity: str, event_time: datetime | None, **values: Any) -> dict[str, Any]:
    return {"stream": stream, "entity": entity, "values": values, "event_time": event_time, "updated_at": T0}


def test_values_and_freshness_read_back_as_written(store: OnlineStore, unique: str) -> None:
    stream, written_at = f"tx-{unique}", datetime.now(tz=UTC)
    values = {"amount": 12.5, "age": 40, "merchant_category": "travel", "log_amount": None, "hour": 0}
    assert store.write([{**row(stream, "a", T0, **values), "updated_at": written_at}]) == 1

    found = store.read(stream, ["a", "nobody", "a"])
    assert set(found) == {"a"}  # a missing entity is simply absent: the API lists it in "missing"
    assert found["a"].values == values
    assert isinstance(found["a"].values["age"], int) and isinstance(found["a"].values["amount"], float)
    assert found["a"].event_time == T0 and found["a"].event_time.tzinfo is not None
    assert found["a"].updated_at == written_at
    assert store.read(stream, []) == {}
    assert store.available()


def test_entities_only_move_forward_in_event_time(store: OnlineStore, unique: str) -> None:
    stream = f"tx-{unique}"
    earlier, later = T0 - timedelta(hours=1), T0 + timedelta(hours=1)
    store.write([row(stream, "a", T0, amount=1.0), row(stream, "b", T0, amount=2.0), row(stream, "c", T0, amount=3.0)])
    store.write(
        [
            row(stream, "a", later, amount=10.0),  # newer: replaces
            row(stream, "b", earlier, amount=20.0),  # older (a late record, an old dataset version): ignored
            row(stream, "c", T0, amount=30.0),  # the same event time: replaces, so a replay is idempotent
        ]
    )
    found = store.read(stream, ["a", "b", "c"])
    assert (found["a"].values["amount"], found["a"].event_time) == (10.0, later)
    assert (found["b"].values["amount"], found["b"].event_time) == (2.0, T0)
    assert (found["c"].values["amount"], found["c"].event_time) == (30.0, T0)


def test_a_missing_event_time_on_either_side_replaces(store: OnlineStore, unique: str) -> None:
    stream = f"tx-{unique}"
    store.write([row(stream, "untimed", None, amount=1.0), row(stream, "timed", T0, amount=2.0)])
    store.write([row(stream, "untimed", T0 - timedelta(days=1), amount=10.0), row(stream, "timed", None, amount=20.0)])
    found = store.read(stream, ["untimed", "timed"])
    assert (found["untimed"].values["amount"], found["untimed"].event_time) == (10.0, T0 - timedelta(days=1))
    assert (found["timed"].values["amount"], found["timed"].event_time) == (20.0, None)


def test_a_write_replaces_the_whole_value_set(store: OnlineStore, unique: str) -> None:
    stream = f"tx-{unique}"
    store.write([row(stream, "a", T0, amount=1.0, dropped_feature="x")])
    store.write([row(stream, "a", T0 + timedelta(seconds=1), amount=2.0)])
    assert store.read(stream, ["a"])["a"].values == {"amount": 2.0}


def test_streams_are_separate_and_batches_span_many_round_trips(store: OnlineStore, unique: str) -> None:
    first, second = f"tx-{unique}", f"other-{unique}"
    count = UPSERT_BATCH_ROWS * 2 + 7
    entities = [f"e{i:05d}" for i in range(count)]
    assert store.write([row(first, e, T0 + timedelta(seconds=i), rank=i) for i, e in enumerate(entities)]) == count
    store.write([row(second, entities[0], T0, rank=-1)])

    found = store.read(first, [*entities, "ghost"])
    assert len(found) == count and "ghost" not in found
    assert all(
        found[e].values["rank"] == i and found[e].event_time == T0 + timedelta(seconds=i)
        for i, e in enumerate(entities)
    )
    other = store.read(second, entities[:2])
    assert list(other) == [entities[0]] and other[entities[0]].values == {"rank": -1}
    assert store.read(first, [entities[0]])[entities[0]].values == {"rank": 0}


# --- Redis only ---


def test_redis_layout_prefix_and_ttl(redis_server: str, unique: str) -> None:
    prefix = f"test-{unique}:"
    store = RedisOnlineStore(
        Settings().features.redis.model_copy(update={"url": redis_server, "key_prefix": prefix, "ttl_seconds": 600})
    )
    store.write([row("tx", "c1", T0, amount=5.0)])
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    try:
        assert client.keys(f"{prefix}*") == [f"{prefix}tx:c1"]
        stored = client.hgetall(f"{prefix}tx:c1")
        assert stored["amount"] == "5.0" and int(stored["@event_time"]) == int(T0.timestamp() * 1_000_000)
        assert 0 < client.ttl(f"{prefix}tx:c1") <= 600
        # An ignored (older) write leaves the value and its expiry as they were.
        client.expire(f"{prefix}tx:c1", 300)
        store.write([row("tx", "c1", T0 - timedelta(days=1), amount=1.0)])
        assert client.hget(f"{prefix}tx:c1", "amount") == "5.0" and client.ttl(f"{prefix}tx:c1") <= 300
    finally:
        client.close()
        store.close()


def test_unreachable_redis_at_startup_is_a_config_error_naming_the_setting(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    settings = Settings(
        home=tmp_path, features={"online_store": "redis", "redis": {"port": port, "timeout_seconds": 2}}
    )
    with pytest.raises(
        ConfigError, match=rf"127\.0\.0\.1:{port}.*features\.redis\.url.*DRIFTLOOP_FEATURES__REDIS__URL"
    ):
        open_online_store(settings, create_engine_for(f"sqlite:///{tmp_path}/x.db"))
    bad_url = Settings(home=tmp_path, features={"online_store": "redis", "redis": {"url": "http://127.0.0.1:1/0"}})
    with pytest.raises(ConfigError, match=r"features\.redis\.url"):
        open_online_store(bad_url, create_engine_for(f"sqlite:///{tmp_path}/x.db"))


def test_unknown_redis_setting_is_refused_naming_it(tmp_path: Path) -> None:
    from driftloop.contracts.settings import load_settings

    with pytest.raises(ConfigError, match=r"features\.redis\.hostname"):
        load_settings(home=tmp_path, features={"online_store": "redis", "redis": {"hostname": "x"}})


def test_redis_going_away_is_a_503_naming_the_server_not_a_500(tmp_path: Path, unique: str) -> None:
    """A Redis of this test's own, stopped while the features API runs."""
    port = free_port()
    proc = spawn(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        tmp_path / "redis.log",
    )
    try:
        wait_until(lambda: port_open("127.0.0.1", port), 30, "redis-server")
        (tmp_path / "pipelines").mkdir()
        shutil.copy(REPO / "pipelines" / "transactions.yaml", tmp_path / "pipelines")
        settings = Settings(
            home=tmp_path / "home",
            pipelines_dir=tmp_path / "pipelines",
            security={"enabled": False},
            features={"online_store": "redis", "redis": {"port": port, "timeout_seconds": 2}},
        )
        migrate(settings.database_url)
        engine = create_engine_for(settings.database_url)
        pipeline = load_pipeline(tmp_path / "pipelines" / "transactions.yaml")
        runtime = SimpleNamespace(
            name="features",
            settings=settings,
            pipelines={pipeline.model.name: pipeline},
            engine=engine,
            Session=session_factory(engine),
        )
        app = base_app(runtime, "features")  # type: ignore[arg-type]
        app.state.context = api.Context(runtime.pipelines, runtime.Session, open_online_store(settings, engine))
        app.include_router(api.router)
        http = TestClient(app)
        writer = RedisOnlineStore(settings.features.redis)  # as the consumer and the stream worker hold one
        lookup = {"stream": "transactions", "entities": ["c1"]}
        assert http.post("/v1/features/online", json=lookup).json()["missing"] == ["c1"]

        assert writer.available()
        stop_pid(proc.pid)
        assert not writer.available()  # /healthz: checks.online_store false, not ready
        response = http.post("/v1/features/online", json=lookup)
        assert response.status_code == 503
        assert f"127.0.0.1:{port}" in response.json()["detail"] and "features.redis" in response.json()["detail"]
        # A materialization or a streaming batch fails with the same message (the consumer records it, retries).
        with pytest.raises(OnlineStoreUnavailable, match=rf"127\.0\.0\.1:{port}.*features\.redis\.url"):
            writer.write([row("transactions", "c1", T0, amount=1.0)])
        engine.dispose()
    finally:
        stop_pid(proc.pid)
