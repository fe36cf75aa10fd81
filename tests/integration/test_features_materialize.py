"""The features service against real Spark, the Tansu broker, the schema registry and SQLite / moto S3:
a dataset version's Parquet -> DatasetVersionCreated on Kafka -> offline Parquet + online store +
FeaturesMaterialized on its topic."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from features_support import dataset_event, raw_rows, write_dataset
from pipeline_support import collect_events, consuming, demo_pipeline, service_runtime, write_pipeline

from driftloop.clients.db.models import FeatureSet, OnlineFeatures
from driftloop.clients.objectstore import open_object_store
from driftloop.clients.spark import stop_spark
from driftloop.contracts import layout
from driftloop.contracts.featuredefs import features_from_instances
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.contracts.settings import Settings
from driftloop.contracts.topics import FEATURES_MATERIALIZED
from driftloop.ops.procs import wait_until
from driftloop.services.features.handlers import FeaturesHandlers
from driftloop.services.features.service import CONSUMER_GROUP, build

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def spark_session_for_module() -> Iterator[None]:
    """The service's one SparkSession is created by the first test and stopped after the module."""
    yield
    stop_spark()


def expected_latest(frame: pd.DataFrame, pipeline: PipelineConfig) -> pd.DataFrame:
    latest = frame.sort_values("event_time").groupby("customer_id").tail(1).set_index("customer_id")
    instances = [
        {k: (None if v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v) for k, v in row.items()}
        for row in latest.reset_index().drop(columns=["is_fraud"]).to_dict(orient="records")
    ]
    features = features_from_instances(instances, pipeline)
    features.index = latest.index
    features["event_time"] = latest["event_time"]
    return features


def test_dataset_version_event_materializes_offline_and_online(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str
) -> None:
    stream, model = f"tx-{unique}", f"fraud-{unique}"
    pipeline = write_pipeline(tmp_path / "pipelines", model, demo_pipeline(stream, model))
    settings = make_settings(pipelines_dir=tmp_path / "pipelines")
    with service_runtime("features", settings) as runtime:
        store = open_object_store(settings)
        frame = raw_rows(rows=300, entities=40)
        write_dataset(store, stream, 1, frame)

        spec = build(runtime)
        [consumer] = spec.consumers
        assert consumer.group == CONSUMER_GROUP
        # The service's handlers under a group of this test's own (the broker is shared by the session's tests).
        with consuming(runtime, consumer, unique):
            cause = dataset_event(stream, 1, frame, store)
            runtime.bus.publish(cause)
            with runtime.Session() as session:
                wait_until(lambda: session.get(FeatureSet, f"{stream}@v1") is not None, 240, "the feature set row")

        # Offline: Parquet under the feature-set prefix with the contract's columns, one row per dataset row.
        prefix = layout.feature_set_prefix(stream, 1)
        keys = list(store.list(prefix))
        assert any(k.endswith(".parquet") for k in keys)
        assert layout.feature_set_manifest_key(stream, 1) in keys
        offline = pq.read_table(store.local_path(prefix)).to_pandas()
        assert list(offline.columns) == ["customer_id", "event_time", *pipeline.feature_names, "is_fraud"]
        assert len(offline) == len(frame)
        manifest = json.loads(store.get_bytes(layout.feature_set_manifest_key(stream, 1)))
        assert manifest["row_count"] == len(frame) and manifest["dataset_version_id"] == f"{stream}@v1"
        merged = offline.merge(frame, on=["customer_id", "event_time"], suffixes=("", "_raw"))
        assert len(merged) == len(frame)
        np.testing.assert_allclose(merged["log_amount"], np.log1p(merged["amount_raw"]))
        assert (merged["is_fraud"].astype(int) == merged["is_fraud_raw"].astype(int)).all()

        # Online: one row per entity holding the values of its newest event.
        expected = expected_latest(frame, pipeline)
        with runtime.Session() as session:
            online = {
                r.entity: r for r in session.scalars(sa.select(OnlineFeatures).where(OnlineFeatures.stream == stream))
            }
            feature_set = session.get(FeatureSet, f"{stream}@v1")
        assert set(online) == set(expected.index)
        for entity, row in expected.iterrows():
            stored = online[entity]
            assert stored.values["amount"] == pytest.approx(row["amount"])
            assert stored.values["merchant_category"] == row["merchant_category"]
            assert stored.event_time.replace(tzinfo=UTC) == row["event_time"].to_pydatetime()
        assert feature_set.row_count == len(frame) and feature_set.uri == store.uri(prefix)

        # The event, caused by the dataset event, on its topic.
        [event] = collect_events(
            runtime.bus, FEATURES_MATERIALIZED.name, lambda e: e.payload.dataset_version_id == f"{stream}@v1"
        )
        assert event.envelope.caused_by == cause.id
        assert event.envelope.cascade_id == cause.envelope.cascade_id
        assert event.payload.feature_set_uri == store.uri(prefix)
        assert event.payload.feature_names == pipeline.feature_names
        assert event.payload.row_count == len(frame) and event.payload.online_entities == 40

        # The API over what was materialized.
        client = TestClient(spec.app)
        listing = client.get("/v1/features", params={"stream": stream}).json()["streams"][0]
        assert [f["name"] for f in listing["features"]] == pipeline.feature_names
        assert listing["versions"][0]["dataset_version_id"] == f"{stream}@v1"
        some = sorted(expected.index)[:2]
        answer = client.post("/v1/features/online", json={"stream": stream, "entities": [*some, "nobody"]}).json()
        assert set(answer["values"]) == set(some) and answer["missing"] == ["nobody"]
        assert answer["values"][some[0]]["amount"] == pytest.approx(expected.loc[some[0], "amount"])
        unknown = client.post("/v1/features/online", json={"stream": "no-such-stream", "entities": ["a"]})
        assert unknown.status_code == 404 and "no-such-stream" in unknown.json()["detail"]
        assert client.post("/v1/features/online", json={"stream": stream}).status_code == 422


def test_materializes_from_s3_and_a_newer_version_moves_entities_forward(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str, s3_endpoint: str
) -> None:
    stream, model = f"tx-{unique}", f"fraud-{unique}"
    pipeline = write_pipeline(tmp_path / "pipelines", model, demo_pipeline(stream, model))
    settings = make_settings(
        pipelines_dir=tmp_path / "pipelines",
        object_store={
            "type": "s3",
            "endpoint": s3_endpoint,
            "bucket": f"features-{unique}",
            "access_key": "testing",
            "secret_key": "testing",
        },
    )
    with service_runtime("features", settings) as runtime:
        store = open_object_store(settings)
        handlers = FeaturesHandlers(runtime, store)

        first = raw_rows(rows=120, entities=10, seed=2)
        write_dataset(store, stream, 1, first)
        handlers.on_dataset_version_created(dataset_event(stream, 1, first, store))
        second = raw_rows(rows=60, entities=10, seed=3)
        second["event_time"] = second["event_time"] + timedelta(days=30)
        write_dataset(store, stream, 2, second)
        handlers.on_dataset_version_created(dataset_event(stream, 2, second, store))
        runtime.bus.flush()

        filesystem, bucket = store.arrow_filesystem()
        offline = pq.read_table(f"{bucket}/{layout.feature_set_prefix(stream, 2)}", filesystem=filesystem).to_pandas()
        assert len(offline) == len(second)
        assert store.exists(layout.feature_set_manifest_key(stream, 2))
        expected = expected_latest(second, pipeline)
        with runtime.Session() as session:
            online: dict[str, Any] = {
                r.entity: r for r in session.scalars(sa.select(OnlineFeatures).where(OnlineFeatures.stream == stream))
            }
        assert set(online) == set(expected.index)
        for entity, row in expected.iterrows():
            assert online[entity].values["amount"] == pytest.approx(row["amount"])


def test_materialization_writes_the_newest_values_to_a_redis_online_store(
    make_settings: Callable[..., Settings], redis_server: str, tmp_path: Path, unique: str
) -> None:
    from driftloop.services.features.onlinestore import RedisOnlineStore

    stream, model = f"tx-{unique}", f"fraud-{unique}"
    pipeline = write_pipeline(tmp_path / "pipelines", model, demo_pipeline(stream, model))
    settings = make_settings(
        pipelines_dir=tmp_path / "pipelines",
        features={"online_store": "redis", "redis": {"url": redis_server, "key_prefix": f"mat-{unique}:"}},
    )
    with service_runtime("features", settings) as runtime:
        store = open_object_store(settings)
        handlers = FeaturesHandlers(runtime, store)
        assert isinstance(handlers.online, RedisOnlineStore)

        frame = raw_rows(rows=90, entities=12, seed=5)
        write_dataset(store, stream, 1, frame)
        handlers.on_dataset_version_created(dataset_event(stream, 1, frame, store))

        expected = expected_latest(frame, pipeline)
        found = handlers.online.read(stream, [*expected.index, "nobody"])
        assert set(found) == set(expected.index)
        for entity, row in expected.iterrows():
            value = found[entity]
            assert value.values["amount"] == pytest.approx(row["amount"])
            assert value.values["merchant_category"] == row["merchant_category"]
            assert value.event_time == row["event_time"].to_pydatetime() and value.updated_at is not None
