"""The triggers service on the real broker and registry: a drift storm gives one request, cooldown, new data
only without a champion, drift waiting for fresh data (then caused by the drift), the manual retrain API."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from monitor_triggers_support import (
    TriggersUnderTest,
    broker_settings,
    demo_config,
    drift,
    running_triggers,
    wait_for,
)
from monitor_triggers_support import champion_promoted as promoted
from monitor_triggers_support import features_materialized as features

from driftloop.clients.db import create_engine_for, migrate, session_factory
from driftloop.clients.db.models import TrainingRequest
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import RunStateChanged
from driftloop.contracts.pipeline import DriftTrigger, NewDataTrigger, PipelineConfig, RetrainPolicy, TriggerSpec
from driftloop.contracts.topics import TRAINING_REQUESTED
from driftloop.errors import DriftloopError
from driftloop.ops.broker import EmbeddedBroker
from driftloop.ops.procs import free_port
from driftloop.runtime.bus import EventBus, ensure_event_topics
from driftloop.services.triggers.handlers import TriggerHandlers
from driftloop.services.triggers.outbox import RequestOutbox
from driftloop.services.triggers.service import build

pytestmark = pytest.mark.integration

Triggers = TriggersUnderTest  # pipelines by role: storm, fresh, bootstrap, nodata


def pipeline(suffix: str, *, wait_for_fresh_data: bool, cooldown: float, only_without_champion: bool) -> PipelineConfig:
    """Every drift retrains here (``retrain_on: [drift]``); causes during a run merge into it."""
    triggers = TriggerSpec(
        new_data=NewDataTrigger(enabled=True, only_without_champion=only_without_champion),
        drift=DriftTrigger(enabled=True, wait_for_fresh_data=wait_for_fresh_data),
        policy=RetrainPolicy(retrain_on=["drift", "performance"]),
        cooldown_seconds=cooldown,
        queue_while_running=False,
    )
    return demo_config(f"tx-{suffix}", f"fraud-{suffix}", triggers=triggers)


@pytest.fixture(scope="module")
def triggers(
    broker: EmbeddedBroker, schema_registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Triggers]:
    suffix = uuid.uuid4().hex[:8]
    home = tmp_path_factory.mktemp("triggers") / "home"
    settings = broker_settings(home, broker.bootstrap_servers, schema_registry_url)
    pipelines = {
        "storm": pipeline(f"storm-{suffix}", wait_for_fresh_data=False, cooldown=300, only_without_champion=True),
        "fresh": pipeline(f"fresh-{suffix}", wait_for_fresh_data=True, cooldown=300, only_without_champion=True),
        "bootstrap": pipeline(f"boot-{suffix}", wait_for_fresh_data=False, cooldown=0, only_without_champion=True),
        "nodata": pipeline(f"nodata-{suffix}", wait_for_fresh_data=False, cooldown=0, only_without_champion=False),
    }
    with running_triggers(settings, pipelines, build, suffix) as running:
        yield running


def test_drift_storm_gives_exactly_one_request_then_cooldown(triggers: Triggers) -> None:
    cfg = triggers.pipelines["storm"]
    # Promotions and data come on different topics: let the champion be known before the data arrives.
    triggers.publish(promoted(cfg, 1))
    wait_for(lambda: triggers.state("storm")["champion_version"] == 1, "the champion to be known")
    triggers.publish(features(cfg, 1))
    wait_for(lambda: triggers.state("storm")["latest_dataset_version_id"] == f"{cfg.stream.name}@v1", "data")

    storm = [triggers.publish(drift(cfg, i)) for i in range(5)]
    wait_for(lambda: len([r for r in triggers.requests("storm") if r["trigger"] == "drift"]) == 5, "5 decisions")

    requested = triggers.training_requested("storm")
    assert len(requested) == 1
    (request,) = requested
    assert request.payload.trigger == "drift"
    assert request.payload.dataset_version_id == f"{cfg.stream.name}@v1"
    assert request.envelope.caused_by in {e.id for e in storm}
    decisions = [r for r in triggers.requests("storm") if r["trigger"] == "drift"]
    # One request; the next drift waits for the cooldown, the rest are coalesced into it (none is lost).
    assert sorted(r["status"] for r in decisions) == ["coalesced"] * 3 + ["pending", "requested"]
    assert all("cooldown" in r["note"] for r in decisions if r["status"] == "pending")
    # The champion exists: the first data version was no new-data trigger either.
    assert [r["status"] for r in triggers.requests("storm") if r["trigger"] == "new_data"] == ["suppressed"]


def test_new_data_triggers_only_without_champion(triggers: Triggers) -> None:
    cfg = triggers.pipelines["bootstrap"]
    first = triggers.publish(features(cfg, 1))
    wait_for(lambda: len(triggers.requests("bootstrap")) == 1, "the first decision")
    (request,) = triggers.training_requested("bootstrap")
    assert request.payload.trigger == "new_data"
    assert request.envelope.caused_by == first.id
    assert request.envelope.cascade_id == first.envelope.cascade_id

    triggers.publish(promoted(cfg, 1))
    wait_for(lambda: triggers.state("bootstrap")["champion_version"] == 1, "the champion to be known")
    triggers.publish(features(cfg, 2))
    wait_for(lambda: len(triggers.requests("bootstrap")) == 2, "the second decision")
    latest = triggers.requests("bootstrap")[0]
    assert latest["status"] == "suppressed"
    assert "champion" in latest["note"]
    assert len(triggers.training_requested("bootstrap")) == 1


def test_drift_waits_for_fresh_data_then_fires_caused_by_the_drift(triggers: Triggers) -> None:
    cfg = triggers.pipelines["fresh"]
    # Promotions and data come on different topics: let the champion be known before the data arrives.
    triggers.publish(promoted(cfg, 1))
    wait_for(lambda: triggers.state("fresh")["champion_version"] == 1, "the champion to be known")
    triggers.publish(features(cfg, 1))
    wait_for(lambda: triggers.state("fresh")["latest_dataset_version_id"] is not None, "the first data version")

    drifts = [triggers.publish(drift(cfg, i)) for i in range(3)]
    wait_for(lambda: len([r for r in triggers.requests("fresh") if r["trigger"] == "drift"]) == 3, "3 decisions")
    assert triggers.training_requested("fresh") == []
    pending = [r for r in triggers.requests("fresh") if r["status"] == "pending"]
    assert len(pending) == 1
    assert pending[0]["cause_event_id"] == drifts[0].id

    fresh = triggers.publish(features(cfg, 2))
    wait_for(lambda: triggers.state("fresh")["pending_request_id"] is None, "the pending request to fire")
    (request,) = triggers.training_requested("fresh")
    assert request.payload.request_id == pending[0]["request_id"]
    assert request.payload.trigger == "drift"
    assert request.payload.dataset_version_id == f"{cfg.stream.name}@v2"
    assert request.envelope.caused_by == drifts[0].id  # the drift, not the features event
    assert request.envelope.cascade_id == drifts[0].envelope.cascade_id
    features_decision = next(r for r in triggers.requests("fresh") if r["cause_event_id"] == fresh.id)
    assert features_decision["status"] == "suppressed"


def test_manual_retrain_api(triggers: Triggers) -> None:
    client = triggers.client
    assert client.post("/v1/models/no-such-model/retrain", json={"reason": "x"}).status_code == 404
    assert client.get("/v1/models/no-such-model/requests").status_code == 404

    # A model whose stream has no materialized data yet: 409 naming the stream.
    cfg = triggers.pipelines["nodata"]
    response = client.post(f"/v1/models/{cfg.model.name}/retrain", json={"reason": "try"})
    assert response.status_code == 409
    assert cfg.stream.name in response.json()["detail"]

    bad = client.post(f"/v1/models/{cfg.model.name}/retrain", json={"reason": ""})
    assert bad.status_code == 422

    storm = triggers.pipelines["storm"]
    triggers.publish(features(storm, 1))  # (again, if the storm test ran): data to train on
    wait_for(lambda: triggers.state("storm")["latest_dataset_version_id"] is not None, "storm data")
    # Other causes of the storm test may still fire (coalesced, once their cooldown ends): count manual ones.
    before = len([e for e in triggers.training_requested("storm") if e.payload.trigger == "manual"])
    response = client.post(f"/v1/models/{storm.model.name}/retrain", json={"reason": "labels fixed"})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "requested"
    manual = [e for e in triggers.training_requested("storm") if e.payload.request_id == body["request_id"]]
    assert len(manual) == 1
    assert manual[0].payload.trigger == "manual"
    assert manual[0].payload.reason == "labels fixed"
    assert manual[0].envelope.caused_by is None
    assert len([e for e in triggers.training_requested("storm") if e.payload.trigger == "manual"]) == before + 1
    assert triggers.requests("storm")[0]["request_id"] == body["request_id"]


def test_decisions_on_postgresql(postgres_url: str) -> None:
    """The same policy state on PostgreSQL: timezone-aware times, the JSON list of active runs, pending requests."""
    migrate(postgres_url)
    cfg = pipeline(f"pg-{uuid.uuid4().hex[:8]}", wait_for_fresh_data=True, cooldown=60, only_without_champion=True)
    published: list[Event] = []
    now = [datetime.now(tz=UTC)]
    handlers = TriggerHandlers(
        {cfg.model.name: cfg}, session_factory(create_engine_for(postgres_url)), published.append, clock=lambda: now[0]
    )
    handlers.on_model_promoted(promoted(cfg, 1))
    handlers.on_features_materialized(features(cfg, 1))
    handlers.on_run_state_changed(
        new_event(RunStateChanged(run_id="r1", model=cfg.model.name, state="running"), producer="t")
    )
    first = drift(cfg, 0)
    handlers.on_drift_detected(first)
    assert "r1" in handlers.requests(cfg.model.name, 1)[0]["note"]
    handlers.on_run_state_changed(
        new_event(RunStateChanged(run_id="r1", model=cfg.model.name, state="failed"), producer="t")
    )
    second = drift(cfg, 1)
    handlers.on_drift_detected(second)
    assert handlers.model_state(cfg.model.name)["pending_request_id"] is not None
    handlers.on_features_materialized(features(cfg, 2))
    requests = [e for e in published if e.type == "TrainingRequested"]
    assert [(e.payload.trigger, e.envelope.caused_by) for e in requests] == [("drift", second.id)]
    now[0] += timedelta(seconds=30)
    handlers.on_drift_detected(drift(cfg, 2))
    assert "cooldown" in handlers.requests(cfg.model.name, 1)[0]["note"]


def test_a_request_the_broker_lost_in_a_restart_is_sent_again_once(
    schema_registry_url: str, tmp_path: Path, unique: str
) -> None:
    """A TrainingRequested acknowledged by a broker that then restarted empty (before training read it) is sent again
    by the outbox, once in the broker's new life, with its own id: training gets the request once."""
    broker = EmbeddedBroker(port=free_port(), log_path=tmp_path / "tansu.log")  # its own: restarted below
    broker.start()
    settings = broker_settings(tmp_path / "home", broker.bootstrap_servers, schema_registry_url)
    # A producer stuck on the old broker is replaced after one unacknowledged publish: 5 s, not the default 30.
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"publish_timeout_seconds": 5.0})})
    migrate(settings.database_url)
    ensure_event_topics(settings)
    cfg = demo_config(f"tx-lost-{unique}", f"fraud-lost-{unique}")
    bus = EventBus(settings, producer_name="triggers")
    Session = session_factory(bus.engine)
    handlers = TriggerHandlers({cfg.model.name: cfg}, Session, bus.publish)
    received: list[Event] = []  # what a stand-in for training's consumer was given
    outbox = RequestOutbox(Session, bus, has_run=lambda request_id: any(
        e.payload.request_id == request_id for e in received))  # fmt: skip
    training = threading.Thread(
        target=bus.run_consumer, args=(f"training-{unique}", {TRAINING_REQUESTED: received.append}), daemon=True
    )
    try:
        assert outbox.drain() == 0  # the topic's life is seen before the request is sent
        handlers.on_features_materialized(features(cfg, 1))  # no champion yet: new data requests a training
        with Session() as session:
            (row,) = session.scalars(sa.select(TrainingRequest).where(TrainingRequest.model == cfg.model.name)).all()
        assert row.status == "requested" and row.event_id is not None
        assert outbox.drain() == 0  # sent in this life: not sent again

        broker.stop()
        broker.start()  # same port, nothing kept: the request is gone before training read it
        ensure_event_topics(settings)
        training.start()
        deadline = time.monotonic() + 90
        while True:  # the first drains may meet the producer still stuck on the broker's old life
            try:
                assert outbox.drain() == 1
                break
            except DriftloopError:
                assert time.monotonic() < deadline, "the outbox never sent the request again"
                time.sleep(1)
        wait_for(lambda: len(received) >= 1, "the request sent again, at training")
        assert outbox.drain() == 0  # once per life of the topic
        time.sleep(2)  # a second copy, if any, would arrive meanwhile
        assert [(e.id, e.payload.request_id) for e in received] == [(row.event_id, row.request_id)]
    finally:
        bus.stop_event.set()
        if training.is_alive():
            training.join(timeout=15)
        bus.close()
        broker.stop()
