"""The registry's handler on a real SQLite database and a local object store; published events are recorded
(the Kafka path is covered by the integration tests)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from model_factory import (
    feature_frame,
    make_pipeline,
    put_artifact,
    put_feature_set,
    train_artifact,
    training_completed,
    training_requested,
)

from driftloop.clients.db import create_engine_for, migrate, session_factory
from driftloop.clients.objectstore import LocalObjectStore
from driftloop.contracts.events import Event, new_event
from driftloop.errors import NotFoundError
from driftloop.services.registry.handlers import RegistryHandlers
from driftloop.services.registry.repository import Registry

MODEL = "fraud-unit"


class RecordingBus:
    def __init__(self) -> None:
        self.published: list[Event] = []

    def publish(self, event: Event, *, wait: bool = True) -> None:
        self.published.append(event)


@pytest.fixture(scope="module")
def models() -> dict:
    pipeline = make_pipeline(model=MODEL, stream="tx-unit", first_version_threshold=0.6, min_improvement=0.01)
    features = feature_frame(pipeline, rows=3000)
    return {
        "pipeline": pipeline,
        "features": features,
        "good": train_artifact(pipeline, features, quality="good", rounds=30),
        "weak": train_artifact(pipeline, features, quality="good", rounds=1),
        "bad": train_artifact(pipeline, features, quality="bad"),
    }


@pytest.fixture
def env(tmp_path: Path, models: dict) -> dict:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    registry = Registry(session_factory(create_engine_for(url)))
    store = LocalObjectStore(tmp_path / "objects")
    bus = RecordingBus()
    handlers = RegistryHandlers(bus, registry, store, {MODEL: models["pipeline"]})  # type: ignore[arg-type]
    fs_uri = put_feature_set(store, "tx-unit", 1, models["features"])
    return {"registry": registry, "store": store, "bus": bus, "handlers": handlers, "fs_uri": fs_uri}


def completed(env: dict, models: dict, run_id: str, quality: str) -> Event:
    uri, sha = put_artifact(env["store"], MODEL, run_id, models[quality])
    completed = training_completed(MODEL, run_id, uri, sha, env["fs_uri"], "tx-unit@v1")
    request = new_event(training_requested(MODEL), producer="triggers")
    return new_event(completed, producer="training", cause=request)


def test_first_good_version_is_registered_and_promoted(env: dict, models: dict) -> None:
    event = completed(env, models, "run-1", "weak")
    env["handlers"].on_training_completed(event)

    types = [e.type for e in env["bus"].published]
    assert types == ["ModelRegistered", "ModelPromoted"]
    registered, promoted = env["bus"].published
    assert registered.payload.version == 1 and promoted.payload.version == 1
    for out in (registered, promoted):
        assert out.envelope.caused_by == event.id
        assert out.envelope.cascade_id == event.envelope.cascade_id
    assert promoted.payload.previous_version is None
    assert promoted.payload.feature_set_uri == env["fs_uri"]
    assert promoted.payload.artifact_sha256 == event.payload.artifact_sha256
    gate = json.loads(promoted.payload.gate_json)
    assert gate["decision"] == "promoted" and gate["challenger_score"] >= 0.6 and gate["holdout_rows"] > 0

    row = env["registry"].get_version(MODEL, 1)
    assert row.status == "promoted"
    assert row.gate == gate
    assert row.lineage["run_id"] == "run-1"
    assert row.lineage["triggering_event_id"] == event.envelope.caused_by
    assert row.lineage["training_completed_event_id"] == event.id
    assert row.lineage["cascade_id"] == event.envelope.cascade_id
    assert env["registry"].alias(MODEL, "champion").version == 1


def test_redelivered_event_creates_no_second_version_and_resends_same_event_ids(env: dict, models: dict) -> None:
    event = completed(env, models, "run-1", "good")
    env["handlers"].on_training_completed(event)
    first_ids = [e.id for e in env["bus"].published]
    env["handlers"].on_training_completed(event)

    assert [v.version for v in env["registry"].versions(MODEL)] == [1]
    assert [e.id for e in env["bus"].published[2:]] == first_ids


def test_worse_challenger_is_rejected_and_champion_kept(env: dict, models: dict) -> None:
    env["handlers"].on_training_completed(completed(env, models, "run-1", "good"))
    env["handlers"].on_training_completed(completed(env, models, "run-2", "bad"))

    rejected = env["bus"].published[-1]
    assert rejected.type == "ModelRejected"
    assert rejected.payload.version == 2 and rejected.payload.champion_version == 1
    assert rejected.payload.challenger_score < rejected.payload.champion_score
    assert env["registry"].alias(MODEL, "champion").version == 1
    assert env["registry"].get_version(MODEL, 2).status == "rejected"
    assert env["registry"].get_version(MODEL, 2).gate["champion_version"] == 1


def test_better_challenger_moves_the_champion(env: dict, models: dict) -> None:
    env["handlers"].on_training_completed(completed(env, models, "run-1", "weak"))
    env["handlers"].on_training_completed(completed(env, models, "run-2", "good"))

    promoted = env["bus"].published[-1]
    assert promoted.type == "ModelPromoted"
    assert promoted.payload.version == 2 and promoted.payload.previous_version == 1
    gate = json.loads(promoted.payload.gate_json)
    assert gate["margin"] >= 0.01 and gate["champion_version"] == 1
    assert env["registry"].alias(MODEL, "champion").version == 2


def test_tampered_challenger_is_rejected_with_the_reason(env: dict, models: dict) -> None:
    event = completed(env, models, "run-1", "good")
    key = env["store"].key_of(event.payload.artifact_uri)
    env["store"].put_bytes(key, env["store"].get_bytes(key) + b"tampered")
    env["handlers"].on_training_completed(event)

    rejected = env["bus"].published[-1]
    assert rejected.type == "ModelRejected"
    assert "sha256" in rejected.payload.reason
    assert env["registry"].alias(MODEL, "champion") is None


def test_first_version_failing_the_threshold_is_rejected(env: dict, models: dict) -> None:
    env["handlers"].on_training_completed(completed(env, models, "run-1", "bad"))
    rejected = env["bus"].published[-1]
    assert rejected.type == "ModelRejected"
    assert rejected.payload.champion_score is None
    assert "threshold" in rejected.payload.reason


def test_unknown_model_raises_not_found(env: dict, models: dict) -> None:
    event = completed(env, models, "run-9", "good")
    other = replace(event, payload=replace(event.payload, model="nobody"))
    with pytest.raises(NotFoundError, match="nobody"):
        env["handlers"].on_training_completed(other)
    assert not env["registry"].model_exists("nobody")
