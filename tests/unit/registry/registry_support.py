"""The registry under test in this process: its handlers on a real SQLite database and object store, a bus that records
what is published, and its HTTP app (``env``: v1 then v2 promoted over it), with real LightGBM models (``models``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
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
from driftloop.contracts.settings import Settings
from driftloop.runtime.service import base_app
from driftloop.services.registry import api
from driftloop.services.registry.handlers import RegistryHandlers
from driftloop.services.registry.repository import Registry

MODEL = "fraud-alias"
ADMIN = {"Authorization": "Bearer admin-secret"}
READER = {"Authorization": "Bearer read-secret-token"}


class RecordingBus:
    def __init__(self) -> None:
        self.published: list[Event] = []

    def publish(self, event: Event, *, wait: bool = True) -> None:
        self.published.append(event)


@pytest.fixture(scope="module")
def models() -> dict:
    pipeline = make_pipeline(model=MODEL, stream="tx-alias", first_version_threshold=0.6, min_improvement=0.01)
    features = feature_frame(pipeline, rows=2000)
    return {
        "pipeline": pipeline,
        "features": features,
        "weak": train_artifact(pipeline, features, quality="good", rounds=1),
        "good": train_artifact(pipeline, features, quality="good", rounds=30),
    }


@pytest.fixture
def env(tmp_path: Path, models: dict) -> dict:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    registry = Registry(session_factory(create_engine_for(url)))
    store = LocalObjectStore(tmp_path / "objects")
    bus = RecordingBus()
    handlers = RegistryHandlers(bus, registry, store, {MODEL: models["pipeline"]})  # type: ignore[arg-type]
    settings = Settings(
        home=tmp_path / "home",
        security={"admin_tokens": {"alice": "admin-secret"}, "read_tokens": {"dashboard": "read-secret-token"}},
    )
    app = base_app(SimpleNamespace(name="registry", settings=settings), "registry")  # type: ignore[arg-type]
    app.state.context = api.Context(registry, handlers)
    app.include_router(api.router)
    fs_uri = put_feature_set(store, "tx-alias", 1, models["features"])
    env = {"registry": registry, "store": store, "bus": bus, "handlers": handlers, "fs_uri": fs_uri}
    env["client"] = TestClient(app)
    # v1 (weak) promoted, v2 (good) promoted over it: champion v2, v1 the previous champion.
    for run_id, quality in (("run-1", "weak"), ("run-2", "good")):
        uri, sha = put_artifact(store, MODEL, run_id, models[quality])
        completed = training_completed(MODEL, run_id, uri, sha, fs_uri, "tx-alias@v1")
        cause = new_event(training_requested(MODEL), producer="triggers")
        handlers.on_training_completed(new_event(completed, producer="training", cause=cause))
    assert registry.aliases(MODEL) == {"champion": 2}
    bus.published.clear()
    return env
