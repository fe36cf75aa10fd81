"""The online lookup's fast path answers exactly what the previous one did, on every store: the database store read
through raw driver rows (SQLite and a real PostgreSQL) and the Redis store on a real redis-server.

The reference is the previous implementation, kept here: rows read through SQLAlchemy's typed columns (or, for
Redis, one HGETALL per entity) and the answer built as ``OnlineResponse`` pydantic objects. The answer of
``POST /v1/features/online`` must equal it value for value and type for type (int stays int, None stays null,
a stored value of a feature no longer defined is left out, a feature missing from the stored values is null),
with the same ``missing`` list; then a burst of concurrent lookups must all get their own right answers."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from driftloop.clients.db import create_engine_for, migrate
from driftloop.clients.db.engine import session_factory
from driftloop.clients.db.models import OnlineFeatures
from driftloop.contracts.pipeline import PipelineConfig, load_pipeline
from driftloop.contracts.settings import Settings
from driftloop.runtime.service import base_app
from driftloop.services.features import api
from driftloop.services.features.onlinestore import (
    EVENT_TIME_FIELD,
    UPDATED_AT_FIELD,
    OnlineStore,
    OnlineValue,
    RedisOnlineStore,
    _from_micros,
    open_online_store,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def served(
    request: pytest.FixtureRequest, tmp_path: Path, unique: str
) -> Iterator[tuple[TestClient, OnlineStore, PipelineConfig, str]]:
    """The features API on a fresh store of each type, opened the way the service opens it."""
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "transactions.yaml").write_text(
        (REPO / "pipelines" / "transactions.yaml").read_text().replace("name: transactions", f"name: tx{unique}", 1)
    )
    pipeline = load_pipeline(tmp_path / "pipelines" / "transactions.yaml")
    features: dict[str, Any] = {}
    if request.param == "redis":
        features = {"online_store": "redis", "redis": {"url": request.getfixturevalue("redis_server")}}
        database_url = f"sqlite:///{tmp_path}/unused.db"
    elif request.param == "postgresql":
        database_url = request.getfixturevalue("postgres_url")
    else:
        database_url = f"sqlite:///{tmp_path}/o.db"
    settings = Settings(
        home=tmp_path / "home",
        pipelines_dir=tmp_path / "pipelines",
        security={"enabled": False},
        database={"url": database_url},
        features=features,
    )
    migrate(database_url)
    engine = create_engine_for(database_url, pool_size=api.LOOKUP_THREADS)
    store = open_online_store(settings, engine)
    pipelines = {pipeline.model.name: pipeline}
    runtime = SimpleNamespace(
        name="features", settings=settings, pipelines=pipelines, engine=engine, Session=session_factory(engine)
    )
    app = base_app(runtime, "features")  # type: ignore[arg-type]
    app.state.context = api.Context(pipelines, runtime.Session, store)
    app.include_router(api.router)
    with TestClient(app) as client:
        yield client, store, pipeline, request.param
    app.state.context.answers.close()
    engine.dispose()


def previous_read(store: OnlineStore, stream: str, entities: list[str]) -> dict[str, OnlineValue]:
    """The previous reads: SQLAlchemy's typed columns per row, or one HGETALL and JSON parse per entity."""
    found = {}
    if isinstance(store, RedisOnlineStore):
        for entity in dict.fromkeys(entities):
            stored = store.client.hgetall(store.key(stream, entity))
            if stored:
                event_time, updated_at = stored.pop(EVENT_TIME_FIELD, None), stored.pop(UPDATED_AT_FIELD, None)
                values = {name: json.loads(text) for name, text in stored.items()}
                found[entity] = OnlineValue(values, _from_micros(event_time), _from_micros(updated_at))
        return found
    columns = (OnlineFeatures.entity, OnlineFeatures.values, OnlineFeatures.event_time, OnlineFeatures.updated_at)
    query = sa.select(*columns).where(OnlineFeatures.stream == stream, OnlineFeatures.entity.in_(entities))
    with store.engine.connect() as conn:  # type: ignore[attr-defined]
        for entity, values, event_time, updated_at in conn.execute(query):
            utc = [None if t is None else (t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)) for t in
                   (event_time, updated_at)]  # fmt: skip
            found[entity] = OnlineValue(values, *utc)
    return found


def previous_answer(pipeline: PipelineConfig, found: dict[str, OnlineValue], entities: list[str]) -> dict[str, Any]:
    """The previous route's answer: pydantic objects per entity, serialized as FastAPI did."""
    values, freshness = {}, {}
    for entity, value in found.items():
        values[entity] = {
            **{n: value.values.get(n) for n in pipeline.feature_names},
            "event_time": None if value.event_time is None else value.event_time.isoformat(),
        }
        freshness[entity] = api.Freshness(event_time=value.event_time, updated_at=value.updated_at, age_seconds=0.0)
    response = api.OnlineResponse(
        stream=pipeline.stream.name,
        feature_view_version=pipeline.feature_view_version,
        values=values,
        freshness=freshness,
        missing=[e for e in dict.fromkeys(entities) if e not in found],
    )
    return json.loads(response.model_dump_json())


def typed(value: Any) -> Any:
    """``value`` with each leaf's JSON type beside it: 1 and 1.0, or 0 and False, are different answers."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


def without_age(answer: dict[str, Any]) -> dict[str, Any]:
    ages = [f.pop("age_seconds") for f in answer["freshness"].values()]
    assert all(isinstance(age, float) and age >= 0 for age in ages), ages
    return answer


def rows_of_every_kind(stream: str) -> list[dict[str, Any]]:
    def row(entity: str, event_time: datetime | None, values: dict[str, Any]) -> dict[str, Any]:
        return {"stream": stream, "entity": entity, "values": values, "event_time": event_time, "updated_at": T0}

    full = {"amount": 12.5, "log_amount": 2.6, "age": 40, "hour": 0, "merchant_category": "travel"}
    return [
        row("full", T0, full),
        row("ints-and-nulls", T0 - timedelta(days=3), {**full, "amount": 3, "log_amount": None, "age": 2**53 + 1}),
        row("unicode", T0, {**full, "merchant_category": 'café ☕ "quoted"\n', "amount": 1e-300}),
        row("partial", T0, {"amount": 7.0}),  # features it lacks answer null
        row("stale-feature", T0, {**full, "dropped_feature": 1.0}),  # a feature no longer defined is left out
        row("no-event-time", None, {**full, "hour": 23}),
        row("whole-second", datetime(2026, 1, 1, tzinfo=UTC), {**full, "amount": -0.0, "age": 0}),
    ]


def test_answers_equal_the_previous_path_value_for_value_and_type_for_type(
    served: tuple[TestClient, OnlineStore, PipelineConfig, str],
) -> None:
    client, store, pipeline, _kind = served
    stream = pipeline.stream.name
    rows = rows_of_every_kind(stream)
    store.write(rows)
    written = [r["entity"] for r in rows]
    lookups = [
        written,
        ["ghost", *written[:3], "full", "ghost", "other-ghost"],  # duplicates and missing, in request order
        ["ghost"],
        ["partial"],
    ]
    for entities in lookups:
        response = client.post("/v1/features/online", json={"stream": stream, "entities": entities})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        expected = without_age(previous_answer(pipeline, previous_read(store, stream, entities), entities))
        assert typed(without_age(response.json())) == typed(expected)
    answer = client.post("/v1/features/online", json={"stream": stream, "entities": written}).json()
    assert (
        answer["values"]["partial"]["log_amount"] is None and "dropped_feature" not in answer["values"]["stale-feature"]
    )
    assert (
        answer["values"]["no-event-time"]["event_time"] is None
        and answer["freshness"]["no-event-time"]["event_time"] is None
    )
    assert (
        type(answer["values"]["ints-and-nulls"]["age"]) is int
        and answer["values"]["ints-and-nulls"]["age"] == 2**53 + 1
    )
    assert answer["freshness"]["full"]["updated_at"] == "2026-05-01T12:00:00.250000Z"


def test_a_burst_of_concurrent_lookups_gets_every_answer_right(
    served: tuple[TestClient, OnlineStore, PipelineConfig, str],
) -> None:
    client, store, pipeline, _kind = served
    stream = pipeline.stream.name
    rng = random.Random(7)
    rows = [
        {
            "stream": stream,
            "entity": f"e{i}",
            "values": {"amount": float(i), "age": i, "merchant_category": f"m{i}"},
            "event_time": T0 + timedelta(seconds=i),
            "updated_at": T0,
        }
        for i in range(300)
    ]
    store.write(rows)
    known = [r["entity"] for r in rows]

    def lookup(n: int) -> tuple[list[str], dict[str, Any]]:
        entities = rng.sample(known, n % 40 + 1) + (["ghost"] if n % 3 == 0 else [])
        response = client.post("/v1/features/online", json={"stream": stream, "entities": entities})
        assert response.status_code == 200, response.text
        return entities, response.json()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lookup, range(200)))
    for entities, answer in answers:
        assert answer["missing"] == (["ghost"] if "ghost" in entities else [])
        assert set(answer["values"]) == set(entities) - {"ghost"}
        for entity, got in answer["values"].items():
            i = int(entity[1:])
            assert (got["amount"], got["age"], got["merchant_category"], got["hour"]) == (float(i), i, f"m{i}", None)
            assert datetime.fromisoformat(got["event_time"]) == T0 + timedelta(seconds=i)
