"""The feature store's contracts without Spark or Kafka: pipeline keys for aggregates, the online store
interface, ``GET /v1/features`` and ``POST /v1/features/online`` (on SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from driftloop.clients.db import migrate
from driftloop.clients.db.engine import create_engine_for, session_factory
from driftloop.contracts.featuredefs import features_from_instances
from driftloop.contracts.pipeline import parse_pipeline
from driftloop.contracts.settings import Settings
from driftloop.errors import ConfigError
from driftloop.runtime.service import base_app
from driftloop.services.features import api
from driftloop.services.features.onlinestore import open_online_store
from driftloop.services.features.streaming import aggregate_as_of

REPO = Path(__file__).resolve().parents[3]
BASE = (REPO / "pipelines" / "transactions.yaml").read_text()
AGGREGATE = "  - {name: amount_sum_1h, aggregate: sum, source: amount, window: 1h}\n"


def with_features(extra: str) -> str:
    anchor = "  - {name: merchant_category, kind: categorical}\n"
    return BASE.replace(anchor, anchor + extra)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  - {name: s, aggregate: sum, source: amount}\n", "needs a 'window'"),
        ("  - {name: s, aggregate: sum, window: 1h}\n", "needs a 'source'"),
        ("  - {name: s, aggregate: mean, source: merchant_category, window: 1h}\n", "needs a numeric field"),
        ("  - {name: s, aggregate: max, source: nope, window: 1d}\n", "reads field 'nope'"),
        ("  - {name: s, aggregate: median, source: amount, window: 1d}\n", "features.5.aggregate"),
        ("  - {name: s, aggregate: sum, source: amount, window: 1 hour}\n", "features.5.window"),
        ("  - {name: s, source: amount, window: 1h}\n", "applies only to an 'aggregate'"),
        ("  - {name: s, aggregate: sum, source: amount, window: 1h, kind: categorical}\n", "only 'last'"),
    ],
)
def test_bad_aggregate_definitions_are_refused_naming_the_problem(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_pipeline(with_features(extra))


def test_feature_view_version_changes_with_the_definitions() -> None:
    plain, aggregated = parse_pipeline(BASE), parse_pipeline(with_features(AGGREGATE))
    assert plain.feature_view_version == parse_pipeline(BASE).feature_view_version
    assert plain.feature_view_version != aggregated.feature_view_version
    assert [f.name for f in aggregated.aggregate_features] == ["amount_sum_1h"]
    assert aggregated.aggregate_features[0].window_seconds == 3600


def test_serving_takes_aggregates_from_the_instance_or_leaves_them_missing() -> None:
    pipeline = parse_pipeline(with_features(AGGREGATE))
    instance = {"amount": 10.0, "age": 30, "hour": 3, "merchant_category": "travel"}
    frame = features_from_instances([instance, {**instance, "amount_sum_1h": 42.0}], pipeline)
    assert frame["amount_sum_1h"].isna().iloc[0] and frame["amount_sum_1h"].iloc[1] == 42.0


def test_window_is_open_at_its_start_and_closed_at_its_end() -> None:
    pipeline = parse_pipeline(with_features(AGGREGATE))
    [feature] = pipeline.aggregate_features
    t = datetime(2026, 1, 1, 12, tzinfo=UTC)
    events = [
        (t - timedelta(hours=1), {"amount": 100.0}),
        (t - timedelta(minutes=59), {"amount": 1.0}),
        (t, {"amount": 2.0}),
    ]
    assert aggregate_as_of(feature, events, t) == 3.0  # the record exactly one window back is out
    assert aggregate_as_of(feature, events, t - timedelta(minutes=30)) == 101.0


@pytest.fixture
def client(tmp_path: Path) -> tuple[TestClient, SimpleNamespace]:
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "p.yaml").write_text(with_features(AGGREGATE))
    settings = Settings(home=tmp_path / "home", pipelines_dir=tmp_path / "pipelines", security={"enabled": False})
    migrate(settings.database_url)
    engine = create_engine_for(settings.database_url)
    pipelines = {"fraud-detector": parse_pipeline(with_features(AGGREGATE))}
    runtime = SimpleNamespace(
        name="features", settings=settings, pipelines=pipelines, engine=engine, Session=session_factory(engine)
    )
    app = base_app(runtime, "features")  # type: ignore[arg-type]
    app.state.context = api.Context(pipelines, runtime.Session, open_online_store(settings, engine))
    app.include_router(api.router)
    return TestClient(app), runtime


def test_online_lookup_reports_values_freshness_and_missing(client: tuple[TestClient, SimpleNamespace]) -> None:
    http, runtime = client
    store = open_online_store(runtime.settings, runtime.engine)
    event_time = datetime(2026, 3, 1, 10, tzinfo=UTC)
    values = {
        "amount": 5.0,
        "log_amount": 1.8,
        "age": 40,
        "hour": 10,
        "merchant_category": "travel",
        "amount_sum_1h": 9.0,
    }
    store.write(
        [
            {
                "stream": "transactions",
                "entity": "c1",
                "values": values,
                "event_time": event_time,
                "updated_at": datetime.now(tz=UTC),
            }
        ]
    )
    response = http.post("/v1/features/online", json={"stream": "transactions", "entities": ["c1", "ghost", "c1"]})
    assert response.status_code == 200
    body = response.json()
    assert body["missing"] == ["ghost"]
    assert body["values"]["c1"]["amount_sum_1h"] == 9.0 and body["values"]["c1"]["merchant_category"] == "travel"
    assert datetime.fromisoformat(body["values"]["c1"]["event_time"]) == event_time
    freshness = body["freshness"]["c1"]
    assert datetime.fromisoformat(freshness["event_time"]) == event_time and freshness["age_seconds"] >= 0
    assert body["feature_view_version"] == runtime.pipelines["fraud-detector"].feature_view_version


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"stream": "nope", "entities": ["a"]}, 404, None),
        ({"stream": "transactions", "entities": []}, 422, "entities"),
        ({"stream": "transactions"}, 422, "entities"),
        ({"entities": ["a"]}, 422, "stream"),
        ({"stream": "transactions", "entities": ["a"], "extra": 1}, 422, "extra"),
    ],
)
def test_bad_lookups_are_4xx_naming_the_field(
    client: tuple[TestClient, SimpleNamespace], body: dict, status: int, field: str | None
) -> None:
    http, _ = client
    response = http.post("/v1/features/online", json=body)
    assert response.status_code == status
    if field is not None:
        assert field in response.text


def test_feature_listing_has_views_versions_and_schema(client: tuple[TestClient, SimpleNamespace]) -> None:
    http, runtime = client
    [stream] = http.get("/v1/features").json()["streams"]
    view = stream["view"]
    assert view["name"] == "transactions"
    assert view["version"] == runtime.pipelines["fraud-detector"].feature_view_version
    roles = {c["name"]: (c["role"], c["type"]) for c in view["schema"]}
    assert roles["customer_id"] == ("entity_key", "string") and roles["amount_sum_1h"] == ("feature", "double")
    assert roles["merchant_category"] == ("feature", "string") and roles["is_fraud"][0] == "label"
    assert {"name": "amount_sum_1h", "aggregate": "sum", "window": "1h"}.items() <= next(
        f for f in stream["features"] if f["name"] == "amount_sum_1h"
    ).items()
    assert stream["versions"] == []
    assert http.get("/v1/features", params={"stream": "nope"}).status_code == 404


def test_unknown_online_store_type_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, features={"online_store": "memcached"})
    with pytest.raises(ConfigError, match=r"memcached.*known: \['database', 'redis'\]"):
        open_online_store(settings, create_engine_for(f"sqlite:///{tmp_path}/x.db"))
