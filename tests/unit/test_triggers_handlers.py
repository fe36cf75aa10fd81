"""The triggers service's handlers without Kafka: SQLite, a settable clock, published events collected."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
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
    PerformanceDegraded,
    RunStateChanged,
)
from driftloop.contracts.pipeline import DriftTrigger, NewDataTrigger, PipelineConfig, TriggerSpec, load_pipeline
from driftloop.errors import NotFoundError
from driftloop.services.triggers.handlers import RetrainConflict, TriggerHandlers

BASE = load_pipeline(Path(__file__).resolve().parents[2] / "pipelines" / "transactions.yaml")
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
    triggers = TriggerSpec(
        new_data=NewDataTrigger(enabled=True, only_without_champion=only_without_champion),
        drift=DriftTrigger(enabled=True, wait_for_fresh_data=wait_for_fresh_data),
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
    return []


@pytest.fixture
def make(session_maker: Any, clock: Clock, published: list[Event]) -> Any:
    def factory(cfg: PipelineConfig) -> TriggerHandlers:
        return TriggerHandlers({MODEL: cfg}, session_maker, published.append, clock=clock)

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


def run_event(run_id: str, state: str) -> Event:
    payload = RunStateChanged(run_id=run_id, model=MODEL, state=state, previous_state=None, dataset_version_id=None)
    return new_event(payload, producer="test")


def test_drift_storm_gives_one_request(make: Any, published: list[Event]) -> None:
    handlers: TriggerHandlers = make(pipeline())
    handlers.on_model_promoted(promoted_event())
    handlers.on_features_materialized(features_event(1))
    assert published == []  # has a champion: no new-data trigger
    storm = [drift_event(i) for i in range(5)]
    for event in storm:
        handlers.on_drift_detected(event)
    assert len(published) == 1
    request = published[0]
    assert request.type == "TrainingRequested"
    assert request.payload.trigger == "drift"
    assert request.payload.dataset_version_id == f"{STREAM}@v1"
    assert request.envelope.caused_by == storm[0].id
    assert request.envelope.cascade_id == storm[0].envelope.cascade_id
    decisions = handlers.requests(MODEL, limit=50)
    statuses = [d["status"] for d in decisions if d["trigger"] == "drift"]
    assert sorted(statuses) == ["requested"] + ["suppressed"] * 4
    assert all("cooldown" in d["note"] for d in decisions if d["status"] == "suppressed" and d["trigger"] == "drift")


def test_same_cause_is_decided_once(make: Any, published: list[Event]) -> None:
    handlers: TriggerHandlers = make(pipeline(cooldown=0))
    handlers.on_features_materialized(features_event(1))
    handlers.on_model_promoted(promoted_event())
    drift = drift_event()
    handlers.on_drift_detected(drift)
    handlers.on_drift_detected(drift)
    assert [e.payload.trigger for e in published] == ["new_data", "drift"]
    assert len([d for d in handlers.requests(MODEL, 50) if d["cause_event_id"] == drift.id]) == 1


def test_cooldown_expires(make: Any, published: list[Event], clock: Clock) -> None:
    handlers: TriggerHandlers = make(pipeline(cooldown=300))
    handlers.on_model_promoted(promoted_event())
    handlers.on_features_materialized(features_event(1))
    handlers.on_drift_detected(drift_event(0))
    clock.now += timedelta(seconds=100)
    handlers.on_drift_detected(drift_event(1))
    assert len(published) == 1
    clock.now += timedelta(seconds=201)
    handlers.on_drift_detected(drift_event(2))
    assert len(published) == 2


def test_cooldown_is_per_trigger_kind(make: Any, published: list[Event], clock: Clock) -> None:
    # The bootstrap retrain (new data) must not swallow a drift that follows within the cooldown.
    handlers: TriggerHandlers = make(pipeline(cooldown=300))
    handlers.on_features_materialized(features_event(1))
    assert [e.payload.trigger for e in published] == ["new_data"]
    handlers.on_run_state_changed(run_event("run-1", "completed"))
    handlers.on_model_promoted(promoted_event())
    clock.now += timedelta(seconds=10)
    handlers.on_drift_detected(drift_event(0))
    assert [e.payload.trigger for e in published] == ["new_data", "drift"]
    clock.now += timedelta(seconds=10)
    handlers.on_drift_detected(drift_event(1))  # a repeat of the same kind within the cooldown
    assert len(published) == 2
    assert "cooldown" in handlers.requests(MODEL, 1)[0]["note"]


def test_new_data_triggers_only_without_champion(make: Any, published: list[Event], clock: Clock) -> None:
    handlers: TriggerHandlers = make(pipeline(cooldown=0))
    first = features_event(1)
    handlers.on_features_materialized(first)
    assert len(published) == 1
    assert published[0].payload.trigger == "new_data"
    assert published[0].envelope.caused_by == first.id
    assert published[0].payload.dataset_version_id == f"{STREAM}@v1"
    handlers.on_model_promoted(promoted_event())
    handlers.on_features_materialized(features_event(2))
    assert len(published) == 1
    latest = handlers.requests(MODEL, 1)[0]
    assert latest["status"] == "suppressed"
    assert "champion" in latest["note"]
    assert handlers.model_state(MODEL)["latest_dataset_version_id"] == f"{STREAM}@v2"


def test_drift_waits_for_fresh_data_and_keeps_the_drift_as_cause(
    make: Any, published: list[Event], clock: Clock
) -> None:
    handlers: TriggerHandlers = make(pipeline(wait_for_fresh_data=True))
    handlers.on_model_promoted(promoted_event())
    handlers.on_features_materialized(features_event(1, when=clock.now))
    clock.now += timedelta(seconds=5)
    drifts = [drift_event(i, when=clock.now) for i in range(3)]
    for drift in drifts:
        handlers.on_drift_detected(drift)
    assert published == []
    state = handlers.model_state(MODEL)
    assert state["pending_request_id"] is not None

    # Data cut before the drift (delivered late) does not count as post-drift.
    handlers.on_features_materialized(features_event(2, when=clock.now - timedelta(seconds=1)))
    assert published == []

    clock.now += timedelta(seconds=5)
    fresh = features_event(3, when=clock.now)
    handlers.on_features_materialized(fresh)
    assert len(published) == 1
    request = published[0]
    assert request.payload.trigger == "drift"
    assert request.payload.dataset_version_id == f"{STREAM}@v3"
    assert request.payload.request_id == state["pending_request_id"]
    assert request.envelope.caused_by == drifts[0].id
    assert request.envelope.cascade_id == drifts[0].envelope.cascade_id
    assert handlers.model_state(MODEL)["pending_request_id"] is None

    # The next data is inside the cooldown and there is a champion: nothing more.
    handlers.on_features_materialized(features_event(4, when=clock.now))
    assert len(published) == 1


def test_active_run_suppresses_causes_until_it_ends(make: Any, published: list[Event], clock: Clock) -> None:
    handlers: TriggerHandlers = make(pipeline(cooldown=0))
    handlers.on_model_promoted(promoted_event())
    handlers.on_features_materialized(features_event(1))
    handlers.on_run_state_changed(run_event("run-1", "running"))
    handlers.on_drift_detected(drift_event(0))
    assert published == []
    assert "run-1" in handlers.requests(MODEL, 1)[0]["note"]
    handlers.on_run_state_changed(run_event("run-1", "completed"))
    handlers.on_drift_detected(drift_event(1))
    assert len(published) == 1


def test_manual_retrain(make: Any, published: list[Event]) -> None:
    handlers: TriggerHandlers = make(pipeline())
    with pytest.raises(NotFoundError):
        handlers.request_manual("no-such-model", "why not")
    with pytest.raises(RetrainConflict, match="no dataset version"):
        handlers.request_manual(MODEL, "please")
    handlers.on_model_promoted(promoted_event())
    handlers.on_features_materialized(features_event(1))
    result = handlers.request_manual(MODEL, "new labels arrived")
    assert result["status"] == "requested"
    assert published[-1].payload.trigger == "manual"
    assert published[-1].payload.reason == "new labels arrived"
    assert published[-1].envelope.caused_by is None
    # A manual request does not start the cooldown: a drift right after it is acted on.
    handlers.on_drift_detected(drift_event(0))
    assert [e.payload.trigger for e in published] == ["manual", "drift"]
    handlers.on_run_state_changed(run_event("run-9", "pending"))
    with pytest.raises(RetrainConflict, match="run-9"):
        handlers.request_manual(MODEL, "again")


def test_manual_retrain_on_a_pinned_dataset_version(make: Any, published: list[Event]) -> None:
    handlers: TriggerHandlers = make(pipeline())
    handlers.on_model_promoted(promoted_event())
    handlers.on_features_materialized(features_event(3))
    for wrong, why in (
        ("other@v1", "not a version of"),
        (f"{STREAM}@v4", "not materialized yet"),
        ("no-version", "not a dataset version id"),
    ):
        with pytest.raises(RetrainConflict, match=why):
            handlers.request_manual(MODEL, "pin", wrong)
    result = handlers.request_manual(MODEL, "reproduce v2", f"{STREAM}@v2")
    assert (result["status"], result["dataset_version_id"]) == ("requested", f"{STREAM}@v2")
    assert published[-1].payload.dataset_version_id == f"{STREAM}@v2"
    assert published[-1].payload.reason == f"reproduce v2 on pinned {STREAM}@v2"


def test_unknown_model_cause_is_recorded_as_suppressed(make: Any, published: list[Event]) -> None:
    handlers: TriggerHandlers = make(pipeline())
    event = new_event(ExternalTrigger(model="ghost", reason="x", details_json="{}"), producer="t")
    handlers.on_external_trigger(event)
    assert published == []
    with handlers.Session() as session:
        from driftloop.clients.db.models import TrainingRequest

        row = session.query(TrainingRequest).filter_by(cause_event_id=event.id).one()
    assert row.status == "suppressed"
    assert "unknown model" in (row.note or "")


def with_triggers(cooldown: float = 300, **changes: Any) -> PipelineConfig:
    base = pipeline(cooldown=cooldown)
    return base.model_copy(update={"triggers": TriggerSpec.model_validate({**base.triggers.model_dump(), **changes})})


def dataset_event(version: int, new_rows: int) -> Event:
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
        max_event_time=None,
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


@pytest.mark.parametrize("kind", ["performance", "external", "drift"])
def test_each_event_cause_gives_exactly_one_request_with_its_cause(
    kind: str, make: Any, published: list[Event]
) -> None:
    handlers: TriggerHandlers = make(with_triggers())
    with_data_and_champion(handlers)
    make_event, handle = {
        "performance": (degraded_event, handlers.on_performance_degraded),
        "external": (external_event, handlers.on_external_trigger),
        "drift": (drift_event, handlers.on_drift_detected),
    }[kind]
    causes = [make_event() for _ in range(4)]
    for cause in causes:
        handle(cause)
    handle(causes[0])  # a redelivery
    assert [e.payload.trigger for e in published] == [kind]
    assert published[0].envelope.caused_by == causes[0].id
    decisions = [d for d in handlers.requests(MODEL, 50) if d["trigger"] == kind]
    assert sorted(d["status"] for d in decisions) == ["requested", "suppressed", "suppressed", "suppressed"]
    assert next(d for d in decisions if d["status"] == "requested")["cause_event_id"] == causes[0].id


def test_performance_trigger_can_be_disabled(make: Any, published: list[Event]) -> None:
    handlers: TriggerHandlers = make(with_triggers(performance={"enabled": False}))
    with_data_and_champion(handlers)
    handlers.on_performance_degraded(degraded_event())
    assert published == []
    assert "disabled" in handlers.requests(MODEL, 1)[0]["note"]


def test_every_n_labels_gives_one_request_per_n_labels(make: Any, published: list[Event], clock: Clock) -> None:
    handlers: TriggerHandlers = make(with_triggers(cooldown=0, labels={"every_n_labels": 5}))
    with_data_and_champion(handlers)
    labels = [feedback_event(i) for i in range(12)]
    for label in labels:
        handlers.on_feedback_received(label)
    assert [e.payload.trigger for e in published] == ["labels", "labels"]
    assert [e.envelope.caused_by for e in published] == [labels[4].id, labels[9].id]
    assert handlers.requests(MODEL, 1)[0]["reason"].startswith("5 labels received")


def test_every_n_new_rows_counts_rows_across_versions(make: Any, published: list[Event]) -> None:
    handlers: TriggerHandlers = make(
        with_triggers(cooldown=0, new_data={"enabled": True, "only_without_champion": False, "every_n_rows": 1000})
    )
    handlers.on_dataset_version_created(dataset_event(1, 600))
    handlers.on_features_materialized(features_event(1))
    assert published == []
    assert "600 new rows" in handlers.requests(MODEL, 1)[0]["note"]
    handlers.on_dataset_version_created(dataset_event(2, 500))
    handlers.on_features_materialized(features_event(2))
    assert [(e.payload.trigger, e.payload.dataset_version_id) for e in published] == [("new_data", f"{STREAM}@v2")]
    handlers.on_dataset_version_created(dataset_event(3, 400))
    handlers.on_features_materialized(features_event(3))
    assert len(published) == 1  # the count restarted at the request


def test_schedule_fires_once_per_cron_slot(make: Any, published: list[Event], clock: Clock) -> None:
    handlers: TriggerHandlers = make(with_triggers(schedule={"cron": "0 * * * *"}))
    with_data_and_champion(handlers)
    clock.now += timedelta(minutes=5)
    assert handlers.check_schedules() == []  # 12:05: the first check starts the clock at the 12:00 slot
    clock.now += timedelta(minutes=30)
    assert handlers.check_schedules() == []  # 12:35: no new slot
    clock.now += timedelta(minutes=26)  # 13:01
    fired = handlers.check_schedules()
    assert len(fired) == 1
    assert handlers.check_schedules() == []  # the same slot again
    # A restarted service (new handlers, same database) does not fire the slot again.
    assert make(with_triggers(schedule={"cron": "0 * * * *"})).check_schedules() == []
    assert [(e.payload.trigger, e.payload.request_id) for e in published] == [("schedule", fired[0])]
    assert published[0].envelope.caused_by is None
    assert "13:00" in handlers.requests(MODEL, 1)[0]["reason"]


def test_queue_while_running_merges_causes_into_one_request_after_the_run(
    make: Any, published: list[Event], clock: Clock
) -> None:
    handlers: TriggerHandlers = make(with_triggers(cooldown=0, queue_while_running=True))
    with_data_and_champion(handlers)
    handlers.on_run_state_changed(run_event("run-1", "running"))
    storm = [drift_event(i) for i in range(3)] + [degraded_event()]
    handlers.on_drift_detected(storm[0])
    handlers.on_drift_detected(storm[1])
    handlers.on_drift_detected(storm[2])
    handlers.on_performance_degraded(storm[3])
    assert published == []
    queued = handlers.requests(MODEL, 50)
    assert [d["status"] for d in queued if d["cause_event_id"] == storm[0].id] == ["pending"]
    assert handlers.model_state(MODEL)["pending_request_id"] is not None
    handlers.on_features_materialized(features_event(2))  # fresh data does not fire a request queued on a run
    assert published == []
    handlers.on_run_state_changed(run_event("run-1", "completed"))
    assert len(published) == 1
    assert published[0].payload.trigger == "drift"
    assert published[0].envelope.caused_by == storm[0].id
    assert published[0].payload.dataset_version_id == f"{STREAM}@v2"
    assert handlers.model_state(MODEL)["pending_request_id"] is None
