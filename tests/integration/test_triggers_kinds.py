"""Every event-driven trigger kind on the real broker: a burst of causes of one kind gives exactly one
TrainingRequested, caused by the first (performance, every N labels, external, every N new rows); and with
``queue_while_running`` a storm during a run gives one request when the run ends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from monitor_triggers_support import (
    DEMO,
    TriggersUnderTest,
    broker_settings,
    demo_config,
    running_triggers,
    wait_for,
)
from monitor_triggers_support import champion_promoted as promoted
from monitor_triggers_support import features_materialized as features

from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import (
    DatasetVersionCreated,
    ExternalTrigger,
    FeedbackReceived,
    ModelRejected,
    PerformanceDegraded,
    RunStateChanged,
)
from driftloop.contracts.pipeline import PipelineConfig, TriggerSpec
from driftloop.ops.broker import EmbeddedBroker
from driftloop.services.triggers.service import build

pytestmark = pytest.mark.integration

ROLES: dict[str, dict[str, Any]] = {
    "performance": {},
    "labels": {"labels": {"every_n_labels": 3}},
    "external": {},
    "rows": {"new_data": {"enabled": True, "only_without_champion": False, "every_n_rows": 1000}},
    "queued": {"queue_while_running": True, "cooldown_seconds": 0},
}


def pipeline(role: str, suffix: str) -> PipelineConfig:
    triggers = {**DEMO.triggers.model_dump(), "cooldown_seconds": 300, **ROLES[role]}
    if role != "rows":
        triggers["new_data"] = {"enabled": True, "only_without_champion": True}
    return demo_config(f"tx-{role}-{suffix}", f"fraud-{role}-{suffix}", triggers=TriggerSpec.model_validate(triggers))


class Env(TriggersUnderTest):
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
    home = tmp_path_factory.mktemp("trigger-kinds") / "home"
    settings = broker_settings(home, broker.bootstrap_servers, schema_registry_url)
    pipelines = {role: pipeline(role, suffix) for role in ROLES}
    with running_triggers(settings, pipelines, build, suffix, kind=Env) as running:
        yield running


def dataset(cfg: PipelineConfig, version: int, new_rows: int) -> Event:
    stream = cfg.stream.name
    payload = DatasetVersionCreated(
        stream=stream,
        dataset_version_id=f"{stream}@v{version}",
        version=version,
        uri=f"file:///objects/datasets/{stream}/v{version}/",
        content_hash="0" * 64,
        row_count=new_rows,
        new_rows=new_rows,
        parent_version_id=None,
        mode="cumulative",
        schema_json="{}",
        profile_json="{}",
        min_event_time=None,
        max_event_time=None,
    )
    return new_event(payload, producer="test-ingestion")


def degraded(cfg: PipelineConfig) -> Event:
    payload = PerformanceDegraded(
        model=cfg.model.name, version=1, metric="roc_auc", value=0.52, threshold=0.7, window_size=200
    )
    return new_event(payload, producer="test-monitor")


def label(cfg: PipelineConfig, i: int) -> Event:
    payload = FeedbackReceived(request_id=f"req-{i}", model=cfg.model.name, index=0, actual=1.0)
    return new_event(payload, producer="test-serving")


def external(cfg: PipelineConfig) -> Event:
    payload = ExternalTrigger(model=cfg.model.name, reason="upstream schema changed", details_json="{}")
    return new_event(payload, producer="test-external")


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
    assert request.payload.trigger == role
    assert request.envelope.caused_by == first.id
    assert request.envelope.cascade_id == first.envelope.cascade_id
    assert request.payload.dataset_version_id == f"{cfg.stream.name}@v1"
    decisions = [d for d in env.requests(role) if d["trigger"] == role]
    # The second cause waits for the cooldown, later ones are coalesced into it: one request now, none lost.
    held = ["pending"] + ["coalesced"] * (decided - 2)
    assert sorted(d["status"] for d in decisions) == sorted(["requested", *held])


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
    assert request.payload.trigger == "new_data"
    assert request.payload.dataset_version_id == f"{cfg.stream.name}@v2"


def test_a_storm_during_a_run_is_queued_into_one_request_when_the_run_ends(env: Env) -> None:
    cfg = env.pipelines["queued"]
    env.with_champion_and_data("queued")
    running = RunStateChanged(run_id="run-q", model=cfg.model.name, state="running")
    env.publish(new_event(running, producer="test-training"))
    wait_for(lambda: env.state("queued")["active_runs"] == ["run-q"], "the run known to be active")
    storm = [env.publish(degraded(cfg)) for _ in range(5)]
    wait_for(lambda: len(env.requests("queued")) == 6, "the storm decided")
    assert env.training_requested("queued") == []
    env.publish(new_event(replace(running, state="completed"), producer="test-training"))
    wait_for(lambda: env.state("queued")["active_runs"] == [], "the run known to be over")
    assert env.training_requested("queued") == []  # its model awaits the gate
    kept = ModelRejected(
        model=cfg.model.name,
        version=2,
        reason="no better",
        metric="roc_auc",
        challenger_score=0.7,
        champion_score=0.7,
        champion_version=1,
        gate_json="{}",
    )
    env.publish(new_event(kept, producer="test-registry"))
    wait_for(lambda: len(env.training_requested("queued")) == 1, "the queued request fired")
    (request,) = env.training_requested("queued")
    assert request.payload.trigger == "performance"
    assert request.envelope.caused_by == storm[0].id
    statuses = sorted(d["status"] for d in env.requests("queued") if d["trigger"] == "performance")
    assert statuses == ["coalesced"] * 4 + ["requested"]
