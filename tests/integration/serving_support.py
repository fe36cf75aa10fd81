"""Registry and serving run in-process for the integration tests: each service as ``driftloop.runtime.service.run``
wires it, minus uvicorn (``ThreadedService``), a registry + serving ``Stack`` with small real LightGBM models, and a
FastAPI app on a real port (``HttpServer``)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from model_factory import (
    feature_frame,
    make_pipeline,
    put_artifact,
    put_feature_set,
    raw_transactions,
    train_artifact,
    training_completed,
    training_requested,
    write_pipeline_dir,
)
from pipeline_support import wait_for

from driftloop.clients.db.models import EventRecord
from driftloop.clients.objectstore import open_object_store
from driftloop.contracts.events import new_event
from driftloop.contracts.settings import Settings
from driftloop.ops.procs import free_port
from driftloop.runtime.pipelines import follow
from driftloop.runtime.service import Runtime, ServiceSpec, _add_health, make_runtime
from driftloop.services.registry.service import build as build_registry
from driftloop.services.serving.service import build as build_serving


class ThreadedService:
    """A service as ``driftloop.runtime.service.run`` wires it, minus uvicorn: consumers and loops in threads."""

    def __init__(
        self,
        name: str,
        build: Callable[[Runtime], ServiceSpec],
        settings: Settings,
        *,
        http: bool = False,
        follow_pipelines: bool = False,
    ) -> None:
        self.runtime = make_runtime(name, settings)
        self.spec = build(self.runtime)
        _add_health(self.spec.app, self.runtime, self.spec)
        self.server: uvicorn.Server | None = None
        if http:  # also answer over HTTP on its port (serving asks the registry that way)
            config = uvicorn.Config(
                self.spec.app, host="127.0.0.1", port=settings.services.port(name), log_config=None, access_log=False
            )
            self.server = uvicorn.Server(config)
            threading.Thread(target=self.server.run, daemon=True).start()
            wait_for(lambda: self.server is not None and self.server.started, f"{name} to listen")
        self.threads = [
            threading.Thread(target=self.runtime.bus.run_consumer, args=(c.group, c.handlers), daemon=True)
            for c in self.spec.consumers
        ] + [
            threading.Thread(target=loop, args=(self.runtime.bus.stop_event,), daemon=True) for loop in self.spec.loops
        ]
        if follow_pipelines:  # take PipelineApplied from the bus, as ``run`` has every service do
            follower = follow(self.runtime.pipelines, self.runtime.bus, name)
            self.threads.append(threading.Thread(target=follower, args=(self.runtime.bus.stop_event,), daemon=True))
        for thread in self.threads:
            thread.start()
        self.client = TestClient(self.spec.app)
        wait_for(lambda: self.client.get("/healthz").json()["ready"], f"{name} to be ready")

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.runtime.bus.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=15)
        self.runtime.bus.close()


class Stack:
    def __init__(self, settings: Settings, model: str, stream: str, *, follow_pipelines: bool = False) -> None:
        # The registry answers over HTTP on a free port: serving checks every promotion with it.
        services = settings.services.model_copy(update={"registry_port": free_port()})
        settings = settings.model_copy(update={"services": services})
        self.settings = settings
        self.model = model
        self.stream = stream
        self.pipeline = make_pipeline(model=model, stream=stream, first_version_threshold=0.6, min_improvement=0.01)
        self.store = open_object_store(settings)
        self.features = feature_frame(self.pipeline, rows=3000)
        self.feature_set_uri = put_feature_set(self.store, stream, 1, self.features)
        self.services: list[ThreadedService] = []
        self.follow_pipelines = follow_pipelines
        self.registry = self.start("registry", build_registry, http=True)
        self.serving = self.start("serving", build_serving)

    def start(self, name: str, build: Callable[[Runtime], ServiceSpec], *, http: bool = False) -> ThreadedService:
        service = ThreadedService(name, build, self.settings, http=http, follow_pipelines=self.follow_pipelines)
        self.services.append(service)
        return service

    def complete_training(self, run_id: str, *, quality: str = "good", rounds: int = 30) -> None:
        """What the training service would do: an artifact in the object store and a TrainingCompleted event."""
        artifact = train_artifact(self.pipeline, self.features, quality=quality, rounds=rounds)
        uri, sha = put_artifact(self.store, self.model, run_id, artifact)
        completed = training_completed(self.model, run_id, uri, sha, self.feature_set_uri, f"{self.stream}@v1")
        request = new_event(training_requested(self.model), producer="test")
        event = new_event(completed, producer="training", cause=request)
        self.registry.runtime.bus.publish(event)

    def decided(self, version: int) -> dict[str, Any]:
        def status() -> dict[str, Any] | None:
            response = self.registry.client.get(f"/v1/models/{self.model}/versions/{version}")
            return (
                response.json() if response.status_code == 200 and response.json()["status"] != "registered" else None
            )

        return wait_for(status, f"the gate decision on v{version}")

    def served_version(self, serving: ThreadedService | None = None) -> int | None:
        response = (serving or self.serving).client.get(f"/v1/models/{self.model}")
        return response.json()["version"] if response.status_code == 200 else None

    def predict(self, rows: list[dict[str, Any]], serving: ThreadedService | None = None) -> Any:
        return (serving or self.serving).client.post(f"/v1/models/{self.model}/predict", json={"instances": rows})

    def events(self, event_type: str) -> list[EventRecord]:
        with self.registry.runtime.Session() as session:
            return list(
                session.scalars(
                    sa.select(EventRecord)
                    .where(EventRecord.event_type == event_type, EventRecord.model == self.model)
                    .order_by(EventRecord.occurred_at)
                )
            )

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


@pytest.fixture
def stack(make_settings: Callable[..., Settings], tmp_path: Path, unique: str) -> Iterator[Stack]:
    model, stream = f"fraud-{unique}", f"tx-{unique}"
    pipelines = write_pipeline_dir(
        tmp_path / "pipelines", model, stream, first_version_threshold=0.6, min_improvement=0.01
    )
    s = Stack(make_settings(pipelines_dir=pipelines), model, stream)
    yield s
    s.stop()


def rows(n: int = 4) -> list[dict[str, Any]]:
    raw = raw_transactions(n, seed=11).drop(columns=["is_fraud"])
    raw["event_time"] = raw["event_time"].astype(str)
    return raw.to_dict(orient="records")


CANARY = """
serving:
  rollout:
    mode: canary
    canary_steps: [0.5]
    step_min_requests: 6
    max_latency_ratio: 1000
    max_mean_prediction_shift: 0.000001
"""


class HttpServer:
    """A FastAPI app on a real port (uvicorn in a thread), stopped at the end."""

    def __init__(self, app: FastAPI, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, "uvicorn to start", timeout=30)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """A plain HTTP client: JSON in, (status, JSON) out."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def canary_stack(make_settings: Callable[..., Settings], tmp_path: Path, unique: str) -> Iterator[Stack]:
    model, stream = f"fraud-{unique}", f"tx-{unique}"
    pipelines = write_pipeline_dir(
        tmp_path / "pipelines", model, stream, first_version_threshold=0.6, min_improvement=0.01
    )
    path = pipelines / f"{model}.yaml"
    path.write_text(path.read_text() + CANARY)
    s = Stack(make_settings(pipelines_dir=pipelines), model, stream)
    yield s
    s.stop()
