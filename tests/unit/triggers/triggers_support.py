"""The triggers service's handlers under test on a real SQLite database: a clock of the test's, the events they publish
and decide, a registry stand-in, and the events the tests feed them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from driftloop.clients.db import create_engine_for, migrate, session_factory
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import (
    DatasetVersionCreated,
    DriftDetected,
    ExternalTrigger,
    FeaturesMaterialized,
    FeedbackReceived,
    ModelPromoted,
    ModelRejected,
    PerformanceDegraded,
    RunStateChanged,
)
from driftloop.contracts.pipeline import (
    DriftTrigger,
    NewDataTrigger,
    PipelineConfig,
    RetrainPolicy,
    TriggerSpec,
    load_pipeline,
)
from driftloop.services.triggers.handlers import TriggerHandlers

BASE = load_pipeline(Path(__file__).resolve().parents[3] / "pipelines" / "transactions.yaml")
MODEL = BASE.model.name
STREAM = BASE.stream.name


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def pipeline(
    wait_for_fresh_data: bool = False, cooldown: float = 300, only_without_champion: bool = True
) -> PipelineConfig:
    """Every drift and degradation retrains (``retrain_on``), unless a test says otherwise."""
    triggers = TriggerSpec(
        new_data=NewDataTrigger(enabled=True, only_without_champion=only_without_champion),
        drift=DriftTrigger(enabled=True, wait_for_fresh_data=wait_for_fresh_data),
        policy=RetrainPolicy(retrain_on=["drift", "performance"]),
        cooldown_seconds=cooldown,
    )
    return BASE.model_copy(update={"triggers": triggers})


@pytest.fixture
def session_maker(tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    return session_factory(create_engine_for(url))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def published() -> list[Event]:
    """The TrainingRequested events."""
    return []


@pytest.fixture
def decisions() -> list[Event]:
    """The RetrainDecision events (the timeline)."""
    return []


class Registry:
    """The registry's rollback route, as the guard calls it."""

    def __init__(self) -> None:
        self.rollbacks: list[tuple[str, int, str]] = []

    def __call__(self, model: str, to: int, reason: str) -> dict[str, Any]:
        self.rollbacks.append((model, to, reason))
        return {"model": model, "alias": "champion", "version": to, "reason": reason}


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def make(session_maker: Any, clock: Clock, published: list[Event], decisions: list[Event], registry: Registry) -> Any:
    def publish(event: Event) -> None:
        (decisions if event.type == "RetrainDecision" else published).append(event)

    def factory(cfg: PipelineConfig) -> TriggerHandlers:
        return TriggerHandlers({MODEL: cfg}, session_maker, publish, clock=clock, rollback=registry)

    return factory


def at(event: Event, when: datetime) -> Event:
    return replace(event, envelope=replace(event.envelope, occurred_at=when))


def features_event(version: int, when: datetime | None = None) -> Event:
    payload = FeaturesMaterialized(
        stream=STREAM,
        dataset_version_id=f"{STREAM}@v{version}",
        feature_set_uri=f"file:///objects/features/{STREAM}/v{version:06d}/",
        feature_names=BASE.feature_names,
        row_count=3000,
        online_entities=100,
    )
    event = new_event(payload, producer="test")
    return at(event, when) if when else event


def drift_event(window: int = 0, when: datetime | None = None) -> Event:
    payload = DriftDetected(
        model=MODEL,
        version=1,
        reference_dataset_version_id=f"{STREAM}@v1",
        window_size=400,
        window_index=window,
        alpha=0.01,
        correction="bonferroni",
        drifted_features=["amount"],
        tests=[],
    )
    event = new_event(payload, producer="test")
    return at(event, when) if when else event


def promoted_event(version: int = 1) -> Event:
    payload = ModelPromoted(
        model=MODEL,
        version=version,
        alias="champion",
        previous_version=None,
        artifact_uri="file:///m.zip",
        artifact_sha256="0" * 64,
        dataset_version_id=f"{STREAM}@v1",
        feature_set_uri="file:///f/",
        reason="first",
        gate_json="{}",
    )
    return new_event(payload, producer="test")


def rejected_event(version: int = 2, champion: int = 1) -> Event:
    payload = ModelRejected(
        model=MODEL,
        version=version,
        reason="no better",
        metric="roc_auc",
        challenger_score=0.7,
        champion_score=0.7,
        champion_version=champion,
        gate_json="{}",
    )
    return new_event(payload, producer="test")


def run_event(run_id: str, state: str) -> Event:
    payload = RunStateChanged(run_id=run_id, model=MODEL, state=state, previous_state=None, dataset_version_id=None)
    return new_event(payload, producer="test")


def with_triggers(cooldown: float = 300, **changes: Any) -> PipelineConfig:
    base = pipeline(cooldown=cooldown)
    return base.model_copy(update={"triggers": TriggerSpec.model_validate({**base.triggers.model_dump(), **changes})})


def dataset_event(version: int, new_rows: int, max_event_time: datetime | None = None) -> Event:
    payload = DatasetVersionCreated(
        stream=STREAM,
        dataset_version_id=f"{STREAM}@v{version}",
        version=version,
        uri=f"file:///objects/datasets/{STREAM}/v{version}/",
        content_hash="0" * 64,
        row_count=new_rows,
        new_rows=new_rows,
        parent_version_id=None,
        mode="cumulative",
        schema_json="{}",
        profile_json="{}",
        min_event_time=None,
        max_event_time=max_event_time,
    )
    return new_event(payload, producer="test")


def feedback_event(i: int) -> Event:
    payload = FeedbackReceived(request_id=f"r{i}", model=MODEL, index=0, actual=1.0)
    return new_event(payload, producer="test")


def degraded_event() -> Event:
    payload = PerformanceDegraded(model=MODEL, version=1, metric="roc_auc", value=0.55, threshold=0.7, window_size=200)
    return new_event(payload, producer="test")


def external_event() -> Event:
    payload = ExternalTrigger(model=MODEL, reason="upstream schema change", details_json="{}")
    return new_event(payload, producer="test")


def with_data_and_champion(handlers: TriggerHandlers) -> None:
    handlers.on_model_promoted(promoted_event())
    handlers.on_features_materialized(features_event(1))
