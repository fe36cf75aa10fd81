"""Serving's rollouts under test in this process: a replica's promotion follower, model table and rollout controller
with a recording bus (``make_env``), promotions of real LightGBM models (``models``), requests and the events they
caused."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from model_factory import feature_frame, make_pipeline, put_artifact, raw_transactions, train_artifact

from driftloop.clients.objectstore import LocalObjectStore
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import ModelPromoted
from driftloop.contracts.pipeline import PipelineConfig, RolloutSpec, ServingSpec
from driftloop.runtime.service import base_app
from driftloop.services.serving import api
from driftloop.services.serving.loader import PromotionFollower
from driftloop.services.serving.rollout import RolloutController
from driftloop.services.serving.served import ModelTable

MODEL = "fraud-rollout-unit"


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    pipeline = make_pipeline(model=MODEL, stream="tx-rollout-unit")
    features = feature_frame(pipeline, rows=1500)
    bad = train_artifact(pipeline, features, rounds=5)
    bad.feature_names = [*bad.feature_names, "not_a_feature"]  # LightGBM refuses the wider matrix
    return {
        "pipeline": pipeline,
        1: train_artifact(pipeline, features, rounds=5),
        2: train_artifact(pipeline, features, rounds=60),
        "bad": bad,
    }


def with_rollout(pipeline: PipelineConfig, **rollout: Any) -> PipelineConfig:
    return pipeline.model_copy(update={"serving": ServingSpec(rollout=RolloutSpec(**rollout))})


def make_env(tmp_path: Path, pipeline: PipelineConfig, replica: str = "replica-a") -> SimpleNamespace:
    store = LocalObjectStore(tmp_path / "objects")
    published: list[Event] = []
    table = ModelTable()
    rollouts = RolloutController(table, published.append, replica)
    pipelines = {MODEL: pipeline}
    follower = PromotionFollower(table, store, pipelines, published.append, replica, rollouts=rollouts)
    app = base_app(SimpleNamespace(name="serving-test"), "serving-test")  # type: ignore[arg-type]
    app.state.context = api.Context(table, pipelines, published.append, replica, rollouts=rollouts)
    app.include_router(api.router)
    return SimpleNamespace(
        store=store, published=published, table=table, rollouts=rollouts, follower=follower, client=TestClient(app)
    )


def promote(env: SimpleNamespace, models: dict[str, Any], key: int | str, version: int) -> Event:
    uri, sha = put_artifact(env.store, MODEL, f"run-{version}", models[key])
    payload = ModelPromoted(
        model=MODEL,
        version=version,
        alias="champion",
        previous_version=None,
        artifact_uri=uri,
        artifact_sha256=sha,
        dataset_version_id="tx@v1",
        feature_set_uri="file:///unused",
        reason="test",
        gate_json="{}",
    )
    event = new_event(payload, producer="registry")
    assert env.follower.load(event)
    return event


def one_row(seed: int) -> list[dict[str, Any]]:
    raw = raw_transactions(1, seed=seed).drop(columns=["is_fraud"])
    raw["event_time"] = raw["event_time"].astype(str)
    return raw.to_dict(orient="records")


def predict(env: SimpleNamespace, seed: int) -> dict[str, Any]:
    response = env.client.post(f"/v1/models/{MODEL}/predict", json={"instances": one_row(seed)})
    assert response.status_code == 200, response.text
    return response.json()


def of_type(env: SimpleNamespace, event_type: str) -> list[Event]:
    env.client.app.state.context.prediction_log.flush()  # answered rows are logged by a background loop
    return [e for e in env.published if e.type == event_type]
