"""Every event-driven trigger kind on the real broker: a burst of causes of one kind gives exactly one
TrainingRequested, caused by the first (performance, every N labels, external, every N new rows); and with
``queue_while_running`` a storm during a run gives one request when the run ends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from monitor_triggers_support import RunningService, read_events, start_service, wait_for

from driftloop.broker import EmbeddedBroker
from driftloop.bus import EventBus
from driftloop.db import migrate
from driftloop.events import Event, new_event
from driftloop.pipeline import PipelineConfig, TriggerSpec, load_pipeline
from driftloop.services.triggers.service import build
from driftloop.settings import Settings
from driftloop.topics import TRAINING_REQUESTED

pytestmark = pytest.mark.integration

BASE = load_pipeline(Path(__file__).resolve().parents[2] / "pipelines" / "transactions.yaml")
ROLES: dict[str, dict[str, Any]] = {
    "performance": {},
    "labels": {"labels": {"every_n_labels": 3}},
    "external": {},
    "rows": {"new_data": {"enabled": True, "only_without_champion": False, "every_n_rows": 1000}},
    "queued": {"queue_while_running": True, "cooldown_seconds": 0},
}


def pipeline(role: str, suffix: str) -> PipelineConfig:
    triggers = {**BASE.triggers.model_dump(), "cooldown_seconds": 300, **ROLES[role]}
    if role != "rows":
        triggers["new_data"] = {"enabled": True, "only_without_champion": True}
    return BASE.model_copy(
        update={
            "stream": BASE.stream.model_copy(update={"name": f"tx-{role}-{suffix}"}),
            "model": BASE.model.model_copy(update={"name": f"fraud-{role}-{suffix}"}),
            "triggers": TriggerSpec.model_validate(triggers),
        }
    )


class Env:
    def __init__(self, running: RunningService, producer: EventBus, settings: Settings, pipelines: dict) -> None:
        self.running = running
        self.client = TestClient(running.spec.app)
        self.producer = producer
        self.settings = settings
        self.pipelines: dict[str, PipelineConfig] = pipelines

    def publish(self, event: Event) -> Event:
        self.producer.publish(event)
        return event

    def model(self, role: str) -> str:
        return self.pipelines[role].model.name

    def state(self, role: str) -> dict[str, Any]:
        return self.client.get(f"/v1/models/{self.model(role)}/trigger-state").json()

    def requests(self, role: str) -> list[dict[str, Any]]:
        return self.client.get(f"/v1/models/{self.model(role)}/requests").json()["requests"]

    def training_requested(self, role: str) -> list[Event]:
        return read_events(self.settings, self.producer, TRAINING_REQUESTED, self.model(role))

    def with_champion_and_data(self, role: str) -> None:
        cfg = self.pipelines[role]
        self.publish(promoted(cfg))
        # Different topics have no order between them: let the champion be known before data arrives.
        wait_for(lambda: self.state(role)["champion_version"] == 1, f"{role}: the champion known")
        self.publish(features(cfg, 1))
        wait_for(lambda: len(self.requests(role)) == 1, f"{role}: the first dataset version decided")


@pytest.fixture(scope="module")
def env(broker: EmbeddedBroker, schema_registry_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(
        home=tmp_path_factory.mktemp("trigger-kinds") / "home",
        pipelines_dir=Path(__file__).resolve().parents[2] / "pipelines",
        kafka={"bootstrap_servers": broker.bootstrap_servers, "session_timeout_ms": 2000},
        schema_registry={"url": schema_registry_url},
    )
    migrate(settings.database_url)
    pipelines = {role: pipeline(role, suffix) for role in ROLES}
    running = start_service("triggers", settings, {p.model.name: p for p in pipelines.values()}, build, suffix)
    producer = EventBus(settings, producer_name="test")
    yield Env(running, producer, settings, pipelines)
    producer.close()
    running.stop()


def features(cfg: PipelineConfig, version: int) -> Event:
    stream = cfg.stream.name
    data = {
        "stream": stream,
        "dataset_version_id": f"{stream}@v{version}",
        "feature_set_uri": f"file:///objects/features/{stream}/v{version:06d}/",
        "feature_names": cfg.feature_names,
        "row_count": 3000,
        "online_entities": 120,
    }
    return new_event("FeaturesMaterialized", data, producer="test-features")


def dataset(cfg: PipelineConfig, version: int, new_rows: int) -> Event:
    stream = cfg.stream.name
    data = {
        "stream": stream,
        "dataset_version_id": f"{stream}@v{version}",
        "version": version,
        "uri": f"file:///objects/datasets/{stream}/v{version}/",
        "content_hash": "0" * 64,
        "row_count": new_rows,
        "new_rows": new_rows,
        "parent_version_id": None,
        "mode": "cumulative",
        "schema_json": "{}",
        "profile_json": "{}",
        "min_event_time": None,
        "max_event_time": None,
    }
    return new_event("DatasetVersionCreated", data, producer="test-ingestion")


def promoted(cfg: PipelineConfig) -> Event:
    data = {
        "model": cfg.model.name,
        "version": 1,
        "alias": "champion",
        "previous_version": None,
        "artifact_uri": "file:///objects/model.zip",
        "artifact_sha256": "0" * 64,
        "dataset_version_id": f"{cfg.stream.name}@v1",
        "feature_set_uri": f"file:///objects/features/{cfg.stream.name}/v000001/",
        "reason": "first version",
        "gate_json": "{}",
    }
    return new_event("ModelPromoted", data, producer="test-registry")


def degraded(cfg: PipelineConfig) -> Event:
    data = {
        "model": cfg.model.name,
        "version": 1,
        "metric": "roc_auc",
        "value": 0.52,
        "threshold": 0.7,
        "window_size": 200,
    }
    return new_event("PerformanceDegraded", data, producer="test-monitor")


def label(cfg: PipelineConfig, i: int) -> Event:
    data = {"request_id": f"req-{i}", "model": cfg.model.name, "index": 0, "actual": 1.0}
    return new_event("FeedbackReceived", data, producer="test-serving")


def external(cfg: PipelineConfig) -> Event:
    data = {"model": cfg.model.name, "reason": "upstream schema changed", "details_json": "{}"}
    return new_event("ExternalTrigger", data, producer="test-external")


@pytest.mark.parametrize("role", ["performance", "labels", "external"])
def test_a_burst_of_one_cause_kind_gives_exactly_one_request(env: Env, role: str) -> None:
    cfg = env.pipelines[role]
    env.with_champion_and_data(role)
    if role == "performance":
        causes = [env.publish(degraded(cfg)) for _ in range(4)]
        first = causes[0]
    elif role == "labels":
        causes = [env.publish(label(cfg, i)) for i in range(8)]  # every 3 labels: a cause at the 3rd and 6th
        first = causes[2]
    else:
        causes = [env.publish(external(cfg)) for _ in range(4)]
        first = causes[0]
    decided = 2 if role == "labels" else 4
    wait_for(lambda: len(env.requests(role)) == 1 + decided, f"{role}: every cause decided")
    wait_for(lambda: len(env.training_requested(role)) == 1, f"{role}: TrainingRequested")
    (request,) = env.training_requested(role)
    assert request["trigger"] == role
    assert request.envelope.caused_by == first.id
    assert request.envelope.cascade_id == first.envelope.cascade_id
    assert request["dataset_version_id"] == f"{cfg.stream.name}@v1"
    decisions = [d for d in env.requests(role) if d["trigger"] == role]
    assert sorted(d["status"] for d in decisions) == ["requested"] + ["suppressed"] * (decided - 1)


def test_every_n_new_rows_gives_one_request_when_the_rows_are_reached(env: Env) -> None:
    cfg = env.pipelines["rows"]
    env.publish(dataset(cfg, 1, 600))
    wait_for(lambda: env.state("rows")["rows_since_request"] == 600, "600 new rows counted")
    env.publish(features(cfg, 1))
    wait_for(lambda: len(env.requests("rows")) == 1, "the first version decided")
    assert "600 new rows" in env.requests("rows")[0]["note"]
    env.publish(dataset(cfg, 2, 500))
    wait_for(lambda: env.state("rows")["rows_since_request"] == 1100, "1100 new rows counted")
    env.publish(features(cfg, 2))
    wait_for(lambda: len(env.training_requested("rows")) == 1, "TrainingRequested once 1000 rows landed")
    (request,) = env.training_requested("rows")
    assert request["trigger"] == "new_data"
    assert request["dataset_version_id"] == f"{cfg.stream.name}@v2"


def test_a_storm_during_a_run_is_queued_into_one_request_when_the_run_ends(env: Env) -> None:
    cfg = env.pipelines["queued"]
    env.with_champion_and_data("queued")
    run = {"run_id": "run-q", "model": cfg.model.name, "previous_state": None, "dataset_version_id": None}
    env.publish(new_event("RunStateChanged", {**run, "state": "running"}, producer="test-training"))
    wait_for(lambda: env.state("queued")["active_runs"] == ["run-q"], "the run known to be active")
    storm = [env.publish(degraded(cfg)) for _ in range(5)]
    wait_for(lambda: len(env.requests("queued")) == 6, "the storm decided")
    assert env.training_requested("queued") == []
    env.publish(new_event("RunStateChanged", {**run, "state": "completed"}, producer="test-training"))
    wait_for(lambda: len(env.training_requested("queued")) == 1, "the queued request fired")
    (request,) = env.training_requested("queued")
    assert request["trigger"] == "performance"
    assert request.envelope.caused_by == storm[0].id
    statuses = sorted(d["status"] for d in env.requests("queued") if d["trigger"] == "performance")
    assert statuses == ["requested"] + ["suppressed"] * 4
