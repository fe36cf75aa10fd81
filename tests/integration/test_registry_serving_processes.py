"""Registry and serving as real service processes (``python -m driftloop.services.<name>``): a TrainingCompleted
event becomes a served champion over HTTP, /healthz shows models_loaded, and SIGTERM stops both cleanly."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from model_factory import (
    feature_frame,
    make_pipeline,
    put_artifact,
    put_feature_set,
    raw_transactions,
    train_artifact,
    training_completed,
    write_pipeline_dir,
)

from driftloop.clients.db import migrate
from driftloop.clients.objectstore import open_object_store
from driftloop.contracts.events import new_event
from driftloop.contracts.settings import Settings, settings_env
from driftloop.ops.procs import free_port, http_ready, pid_alive, spawn, stop_pid, wait_until
from driftloop.runtime.bus import EventBus

pytestmark = pytest.mark.integration


def test_service_processes_register_promote_and_serve(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str
) -> None:
    model, stream = f"fraud-{unique}", f"tx-{unique}"
    pipelines = write_pipeline_dir(tmp_path / "pipelines", model, stream, first_version_threshold=0.6)
    settings = make_settings(
        pipelines_dir=pipelines, services={"registry_port": free_port(), "serving_port": free_port()}
    )
    migrate(settings.database_url)
    pipeline = make_pipeline(model=model, stream=stream)
    store = open_object_store(settings)
    features = feature_frame(pipeline, rows=2000)
    feature_set_uri = put_feature_set(store, stream, 1, features)

    procs = {
        name: spawn(
            [sys.executable, "-m", f"driftloop.services.{name}"], tmp_path / f"{name}.out", settings_env(settings)
        )
        for name in ("registry", "serving")
    }
    registry_url, serving_url = settings.services.url("registry"), settings.services.url("serving")
    try:
        for name, url in (("registry", registry_url), ("serving", serving_url)):
            wait_until(lambda url=url: http_ready(f"{url}/healthz"), 90, f"the {name} process")
        health = httpx.get(f"{serving_url}/healthz").json()
        assert health["ready"] is True and health["models_loaded"] == 0
        assert health["consumers"][0]["group"].startswith("driftloop-serving-")

        uri, sha = put_artifact(store, model, "run-1", train_artifact(pipeline, features))
        completed = training_completed(model, "run-1", uri, sha, feature_set_uri, f"{stream}@v1")
        bus = EventBus(settings, producer_name="test")
        bus.publish(new_event(completed, producer="test"))
        bus.close()

        wait_until(lambda: httpx.get(f"{serving_url}/v1/models/{model}").status_code == 200, 90, "serving v1")
        assert httpx.get(f"{serving_url}/v1/models/{model}").json()["sha256"] == sha
        assert httpx.get(f"{registry_url}/v1/models/{model}/aliases/champion").json()["version"] == 1
        assert httpx.get(f"{serving_url}/healthz").json()["models_loaded"] == 1

        raw = raw_transactions(2, seed=3).drop(columns=["is_fraud"])
        raw["event_time"] = raw["event_time"].astype(str)
        response = httpx.post(f"{serving_url}/v1/models/{model}/predict", json={"instances": raw.to_dict("records")})
        assert response.status_code == 200 and response.json()["version"] == 1
        assert len(response.json()["predictions"]) == 2
    finally:
        for proc in procs.values():
            stop_pid(proc.pid)
    assert not any(pid_alive(p.pid) for p in procs.values())
    for name in procs:
        assert "Traceback" not in (tmp_path / f"{name}.out").read_text(), name
