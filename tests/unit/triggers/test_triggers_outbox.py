"""The triggers' outbox: a TrainingRequested that training was not seen to have is sent again, with its own id, once
per life of the topic (a broker restarted empty gives the topic a new id); a run caused by the request, or one
training has for its id, ends that."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from driftloop.clients.db import create_engine_for, migrate, session_factory
from driftloop.clients.db.models import TrainingRequest
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import FeaturesMaterialized, RunStateChanged
from driftloop.contracts.pipeline import load_pipeline
from driftloop.services.triggers.handlers import TriggerHandlers
from driftloop.services.triggers.outbox import RequestOutbox

BASE = load_pipeline(Path(__file__).resolve().parents[3] / "pipelines" / "transactions.yaml")
MODEL, STREAM = BASE.model.name, BASE.stream.name


class Bus:
    def __init__(self) -> None:
        self.published: list[Event] = []

    def publish(self, event: Event, *, wait: bool = True) -> None:
        self.published.append(event)

    def flush(self) -> None:
        pass


class Training:
    def __init__(self) -> None:
        self.runs: set[str] = set()

    def has_run(self, request_id: str) -> bool:
        return request_id in self.runs


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    Session = session_factory(create_engine_for(url))
    bus, training, life = Bus(), Training(), ["life-1"]
    handlers = TriggerHandlers({MODEL: BASE}, Session, bus.publish)
    outbox = RequestOutbox(Session, bus, training.has_run, topic_life=lambda: life[0])  # type: ignore[arg-type]
    return {"Session": Session, "bus": bus, "training": training, "life": life, "handlers": handlers, "outbox": outbox}


def request_training(env: dict[str, Any]) -> TrainingRequest:
    """New data without a champion: one TrainingRequested, sent with its decision."""
    payload = FeaturesMaterialized(
        stream=STREAM,
        dataset_version_id=f"{STREAM}@v1",
        feature_set_uri=f"file:///objects/features/{STREAM}/v000001/",
        feature_names=BASE.feature_names,
        row_count=3000,
        online_entities=100,
    )
    env["handlers"].on_features_materialized(new_event(payload, producer="test"))
    with env["Session"]() as session:
        (row,) = session.scalars(sa.select(TrainingRequest).where(TrainingRequest.status == "requested")).all()
    return row


def sent(env: dict[str, Any]) -> list[Event]:
    return [e for e in env["bus"].published if e.type == "TrainingRequested"]


def test_a_request_is_sent_again_once_per_new_life_until_training_has_it(env: dict[str, Any]) -> None:
    outbox, life = env["outbox"], env["life"]
    assert outbox.drain() == 0  # life-1 seen before the request
    row = request_training(env)
    (first,) = sent(env)
    assert outbox.drain() == 0  # sent in life-1

    life[0] = "life-2"  # the broker restarted empty: what it held is gone
    assert outbox.drain() == 1
    again = sent(env)[-1]
    assert (again.id, again.payload.request_id, again.envelope.cascade_id) == (first.id, row.request_id,
                                                                              first.envelope.cascade_id)  # fmt: skip
    assert again.payload == first.payload
    assert outbox.drain() == 0  # once per life

    env["training"].runs.add(row.request_id)
    life[0] = "life-3"
    assert outbox.drain() == 0  # training has it: acknowledged, never sent again
    with env["Session"]() as session:
        assert session.get(TrainingRequest, row.request_id).acknowledged_at is not None


def test_a_run_caused_by_the_request_acknowledges_it(env: dict[str, Any]) -> None:
    outbox, life = env["outbox"], env["life"]
    outbox.drain()
    row = request_training(env)
    (request,) = sent(env)
    started = RunStateChanged(run_id="run-1", model=MODEL, state="pending", message="x")
    env["handlers"].on_run_state_changed(new_event(started, producer="training", cause=request))
    life[0] = "life-2"
    assert outbox.drain() == 0
    with env["Session"]() as session:
        assert session.get(TrainingRequest, row.request_id).acknowledged_at is not None


def test_a_request_sent_before_this_process_saw_the_life_is_checked_with_training(env: dict[str, Any]) -> None:
    row = request_training(env)  # e.g. sent by the process before a restart of the triggers
    later = datetime.now(tz=UTC) + timedelta(seconds=5)
    assert env["outbox"].drain(later) == 1  # training does not have it: sent again
    assert env["outbox"].drain(later) == 0
    with env["Session"]() as session:
        assert session.get(TrainingRequest, row.request_id).published_in == "life-1"
