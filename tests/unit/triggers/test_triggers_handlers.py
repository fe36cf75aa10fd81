"""The triggers service's handlers without Kafka: SQLite, a settable clock, published events collected."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from triggers_support import (
    MODEL,
    STREAM,
    Clock,
    Registry,
    dataset_event,
    degraded_event,
    drift_event,
    external_event,
    features_event,
    feedback_event,
    pipeline,
    promoted_event,
    rejected_event,
    run_event,
    with_data_and_champion,
    with_triggers,
)

from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import (
    ExternalTrigger,
    PerformanceDegraded,
)
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.errors import NotFoundError
from driftloop.services.triggers.handlers import RetrainConflict, TriggerHandlers


def test_a_decision_redone_after_its_request_went_out_sends_the_same_event(
    session_maker: Any, clock: Clock, published: list[Event]
) -> None:
    """A crash after publishing the request and before committing the decision: the redelivered drift is decided
    again, and its request carries the same request id and event id (training handles it once)."""
    crash = [True]

    def publish(event: Event) -> None:
        if event.type == "TrainingRequested":
            published.append(event)
            if crash.pop() if crash else False:
                raise RuntimeError("killed after the broker took the request")

    handlers = TriggerHandlers({MODEL: pipeline()}, session_maker, publish, clock=clock)
    handlers.on_model_promoted(promoted_event())
    handlers.on_features_materialized(features_event(1))
    drift = drift_event()
    with pytest.raises(RuntimeError):
        handlers.on_drift_detected(drift)

    def drift_rows() -> list[dict[str, Any]]:
        return [r for r in handlers.requests(MODEL, limit=5) if r["trigger"] == "drift"]

    assert drift_rows() == []  # the decision was rolled back
    handlers.on_drift_detected(drift)
    assert [(e.id, e.payload.request_id) for e in published] == [(published[0].id, published[0].payload.request_id)] * 2
    [row] = drift_rows()
    assert (row["status"], row["event_id"]) == ("requested", published[0].id)


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
    # The second drift waits for the cooldown; the rest are coalesced into it: nothing is lost.
    assert sorted(statuses) == ["coalesced"] * 3 + ["pending", "requested"]
    (pending,) = [d for d in decisions if d["status"] == "pending"]
    assert "cooldown" in pending["note"]
    assert all(d["merged_into"] == pending["request_id"] for d in decisions if d["status"] == "coalesced")


def test_a_cause_held_by_the_cooldown_fires_once_when_it_ends(
    make: Any, published: list[Event], decisions: list[Event], clock: Clock
) -> None:
    handlers: TriggerHandlers = make(pipeline())
    handlers.on_model_promoted(promoted_event())
    handlers.on_features_materialized(features_event(1))
    storm = [drift_event(i) for i in range(4)]
    for event in storm:
        handlers.on_drift_detected(event)
    clock.now += timedelta(seconds=299)
    assert handlers.check_due() == []
    clock.now += timedelta(seconds=2)
    fired = handlers.check_due()
    assert len(fired) == 1
    assert [e.payload.request_id for e in published] == [published[0].payload.request_id, fired[0]]
    assert published[1].envelope.caused_by == storm[1].id  # the first cause the cooldown held
    assert handlers.check_due() == []
    retrains = [json.loads(e.payload.numbers_json) for e in decisions if e.payload.decision == "retrain"]
    assert retrains[-1] == {"coalesced": 2}
    # The new data (a champion exists) was reported as suppressed: every decision is on the timeline.
    assert sorted({e.payload.decision for e in decisions}) == ["coalesced", "pending", "retrain", "suppressed"]


def test_a_held_alarm_about_a_replaced_champion_goes_stale(
    make: Any, published: list[Event], decisions: list[Event], clock: Clock
) -> None:
    handlers: TriggerHandlers = make(pipeline())
    handlers.on_model_promoted(promoted_event())
    handlers.on_features_materialized(features_event(1))
    handlers.on_drift_detected(drift_event(0))
    handlers.on_drift_detected(drift_event(1))  # held by the cooldown
    handlers.on_model_promoted(promoted_event(version=2))  # the retrain's model is champion now
    clock.now += timedelta(seconds=400)
    assert handlers.check_due() == []
    assert len(published) == 1
    stale = [e for e in decisions if e.payload.decision == "stale"]
    assert len(stale) == 1 and stale[0].payload.version == 1 and stale[0].payload.champion_version == 2
    # A late alarm about v1 is stale at once, and never retrains.
    handlers.on_drift_detected(drift_event(2))
    assert handlers.requests(MODEL, 1)[0]["status"] == "stale"
    assert len(published) == 1


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


def test_cooldown_is_per_model_and_holds_causes_of_every_kind(make: Any, published: list[Event], clock: Clock) -> None:
    # The bootstrap retrain (new data) does not swallow a drift that follows within the cooldown: the drift is
    # held, and fires when the cooldown ends (not right after the bootstrap, on the same data).
    handlers: TriggerHandlers = make(pipeline(cooldown=300))
    handlers.on_features_materialized(features_event(1))
    assert [e.payload.trigger for e in published] == ["new_data"]
    handlers.on_run_state_changed(run_event("run-1", "completed"))
    handlers.on_model_promoted(promoted_event())
    clock.now += timedelta(seconds=10)
    handlers.on_drift_detected(drift_event(0))
    clock.now += timedelta(seconds=10)
    handlers.on_drift_detected(drift_event(1))
    assert [e.payload.trigger for e in published] == ["new_data"]
    assert [d["status"] for d in handlers.requests(MODEL, 2)] == ["coalesced", "pending"]
    assert "cooldown" in handlers.requests(MODEL, 2)[1]["note"]
    clock.now += timedelta(seconds=281)
    handlers.check_due()
    assert [e.payload.trigger for e in published] == ["new_data", "drift"]


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
    handlers: TriggerHandlers = make(with_triggers(cooldown=0, queue_while_running=False))
    handlers.on_model_promoted(promoted_event())
    handlers.on_features_materialized(features_event(1))
    handlers.on_run_state_changed(run_event("run-1", "running"))
    handlers.on_drift_detected(drift_event(0))
    assert published == []
    assert "run-1" in handlers.requests(MODEL, 1)[0]["note"]
    handlers.on_run_state_changed(run_event("run-1", "completed"))
    handlers.on_drift_detected(drift_event(1))  # the run's model awaits the gate
    assert published == []
    assert "gate" in handlers.requests(MODEL, 1)[0]["note"]
    handlers.on_model_rejected(rejected_event())
    handlers.on_drift_detected(drift_event(2))
    assert len(published) == 1


def test_manual_retrain(make: Any, published: list[Event]) -> None:
    handlers: TriggerHandlers = make(pipeline())
    with pytest.raises(NotFoundError):
        handlers.request_manual("no-such-model", "why not")
    with pytest.raises(RetrainConflict, match="no dataset version") as refused:
        handlers.request_manual(MODEL, "please")
    assert refused.value.code == "retrain_conflict"
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
    with pytest.raises(RetrainConflict, match="run-9") as refused:
        handlers.request_manual(MODEL, "again")
    assert refused.value.code == "run_in_progress"


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
    assert sorted(d["status"] for d in decisions) == ["coalesced", "coalesced", "pending", "requested"]
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
    assert published == []  # the run's model awaits the gate: judged against the champion it keeps or makes
    handlers.on_model_rejected(rejected_event())
    assert len(published) == 1
    assert published[0].payload.trigger == "drift"
    assert published[0].envelope.caused_by == storm[0].id
    assert published[0].payload.dataset_version_id == f"{STREAM}@v2"
    assert handlers.model_state(MODEL)["pending_request_id"] is None


def test_a_gate_decision_read_before_the_runs_completion_does_not_hold_causes_back(
    make: Any, published: list[Event], clock: Clock
) -> None:
    """ModelRejected (registry's topic) can be read before the run's RunStateChanged "completed" (training's): the
    completion must not then wait for a gate that has already decided."""
    handlers: TriggerHandlers = make(with_triggers(cooldown=0, queue_while_running=True))
    with_data_and_champion(handlers)
    running = run_event("run-1", "running")
    handlers.on_run_state_changed(running)
    completed = run_event("run-1", "completed")  # made before the decision, read after it
    handlers.on_model_rejected(rejected_event())
    handlers.on_run_state_changed(completed)
    assert handlers.model_state(MODEL)["pending_request_id"] is None
    handlers.on_drift_detected(drift_event(1))
    assert [e.payload.trigger for e in published] == ["drift"]  # fired, not queued behind a decided gate


def guard_event(version: int = 2, previous: int = 1) -> Event:
    payload = PerformanceDegraded(
        model=MODEL,
        version=version,
        metric="roc_auc",
        value=0.61,
        threshold=0.78,
        window_size=200,
        previous_version=previous,
        previous_value=0.80,
        reason="guard",
    )
    return new_event(payload, producer="test")


def test_guard_rolls_back_through_the_registry_then_the_policy_decides(
    make: Any, published: list[Event], decisions: list[Event], registry: Registry
) -> None:
    handlers: TriggerHandlers = make(with_triggers(cooldown=0))
    handlers.on_features_materialized(features_event(1))
    handlers.on_model_promoted(promoted_event(version=2))
    guard = guard_event()
    handlers.on_performance_degraded(guard)
    handlers.on_performance_degraded(guard)  # a redelivery: one rollback
    assert registry.rollbacks == [(MODEL, 1, registry.rollbacks[0][2])]
    assert "guard" in registry.rollbacks[0][2] and "v1" in registry.rollbacks[0][2]
    (rollback,) = [e for e in decisions if e.payload.decision == "rollback"]
    assert rollback.payload.version == 2
    assert json.loads(rollback.payload.numbers_json)["previous_value"] == 0.80
    # The retrain decision, by the policy (performance retrains), on new data only: v2 was trained on the latest.
    assert [e.payload.trigger for e in published] == ["new_data"]
    handlers.on_features_materialized(features_event(2))
    assert [(e.payload.trigger, e.envelope.caused_by) for e in published][-1] == ("guard", guard.id)
    assert published[-1].payload.dataset_version_id == f"{STREAM}@v2"
    # A guard about a version that is no longer champion rolls nothing back.
    handlers.on_model_promoted(promoted_event(version=3))
    handlers.on_performance_degraded(guard_event(version=2))
    assert len(registry.rollbacks) == 1
    assert handlers.requests(MODEL, 1)[0]["status"] == "stale"


def test_harmless_drift_is_reported_and_a_later_degradation_confirms_it(
    make: Any, published: list[Event], decisions: list[Event]
) -> None:
    confirm_only = {"policy": {"retrain_on": ["drift_confirmed_by_performance"]}}
    handlers: TriggerHandlers = make(with_triggers(cooldown=0, **confirm_only))
    with_data_and_champion(handlers)
    drift = drift_event(0)
    drift = replace(drift, payload=replace(drift.payload, performance_degraded=False, performance_value=0.86))
    handlers.on_drift_detected(drift)
    assert published == []
    (reported,) = [e for e in decisions if e.payload.trigger == "drift"]
    assert reported.payload.decision == "suppressed"
    assert reported.payload.note.startswith("reported, not retrained")
    assert json.loads(reported.payload.numbers_json)["performance_value"] == 0.86
    handlers.on_performance_degraded(degraded_event())
    assert [e.payload.trigger for e in published] == ["performance"]


def test_cooldown_in_event_time_ends_with_the_stream_not_the_wall_clock(
    make: Any, published: list[Event], clock: Clock
) -> None:
    handlers: TriggerHandlers = make(with_triggers(cooldown_by="event_time", cooldown_seconds=3600))
    handlers.on_dataset_version_created(dataset_event(1, 100, max_event_time=datetime(2020, 1, 1, tzinfo=UTC)))
    with_data_and_champion(handlers)
    handlers.on_drift_detected(drift_event(0))
    handlers.on_drift_detected(drift_event(1))  # held
    clock.now += timedelta(days=1)  # wall time does not end it
    handlers.check_due()
    assert len(published) == 1
    handlers.on_dataset_version_created(dataset_event(2, 100, max_event_time=datetime(2020, 1, 1, 1, tzinfo=UTC)))
    assert len(published) == 2
    assert published[1].envelope.caused_by is not None


def test_change_start_travels_with_the_request(make: Any, published: list[Event]) -> None:
    handlers: TriggerHandlers = make(with_triggers(cooldown=0))
    with_data_and_champion(handlers)
    start = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    drift = drift_event(0)
    drift = replace(
        drift, payload=replace(drift.payload, window_start_time=start, window_end_time=start + timedelta(hours=1))
    )
    handlers.on_drift_detected(drift)
    assert published[0].payload.change_started_at == start


def test_where_the_shift_began_inside_its_window_travels_with_the_request(make: Any, published: list[Event]) -> None:
    handlers: TriggerHandlers = make(with_triggers(cooldown=0))
    with_data_and_champion(handlers)
    start = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    shifted = start + timedelta(minutes=40)
    drift = drift_event(0)
    window = {"window_start_time": start, "window_end_time": start + timedelta(hours=1)}
    drift = replace(drift, payload=replace(drift.payload, **window, shift_started_time=shifted))
    handlers.on_drift_detected(drift)
    assert published[0].payload.change_started_at == shifted


def test_a_drift_held_by_the_cooldown_still_waits_for_fresh_data(
    make: Any, published: list[Event], clock: Clock
) -> None:
    handlers: TriggerHandlers = make(pipeline(wait_for_fresh_data=True))
    handlers.on_model_promoted(promoted_event())
    handlers.on_features_materialized(features_event(1, when=clock.now))
    handlers.request_manual(MODEL, "labels fixed")  # manual: no cooldown
    handlers.on_external_trigger(external_event())  # automatic: the cooldown starts
    clock.now += timedelta(seconds=5)
    drift = drift_event(0, when=clock.now)
    handlers.on_drift_detected(drift)
    (held,) = [d for d in handlers.requests(MODEL, 9) if d["cause_event_id"] == drift.id]
    assert held["wait_for"] == "cooldown"
    clock.now += timedelta(seconds=300)
    handlers.check_due()
    assert [e.payload.trigger for e in published] == ["manual", "external"]
    (held,) = [d for d in handlers.requests(MODEL, 9) if d["cause_event_id"] == drift.id]
    assert (held["status"], held["wait_for"]) == ("pending", "data")
    handlers.on_features_materialized(features_event(2, when=clock.now))
    assert [e.payload.trigger for e in published][-1] == "drift"
    assert published[-1].envelope.caused_by == drift.id


def located_degradation(start: datetime) -> Event:
    payload = PerformanceDegraded(
        model=MODEL,
        version=1,
        metric="error_rate",
        value=0.2,
        threshold=0.05,
        window_size=200,
        reason="change",
        window_start_time=start,
    )
    return new_event(payload, producer="test")


def test_a_located_change_is_retrained_again_as_post_change_rows_land(
    make: Any, published: list[Event], decisions: list[Event]
) -> None:
    # after_change.followup_rows: the change's first retrain, then one more at 500 and at 1500 rows landed since
    # the cut it trained on, on the rows after the same change, in its cascade; never a fourth run, and none while
    # a run is active.
    handlers: TriggerHandlers = make(with_triggers(cooldown=0, after_change={"followup_rows": [500, 1500]}))
    handlers.on_dataset_version_created(dataset_event(1, 1000))
    with_data_and_champion(handlers)
    start = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    handlers.on_performance_degraded(located_degradation(start))
    assert [e.payload.trigger for e in published] == ["performance"]
    handlers.on_run_state_changed(run_event("r1", "running"))
    handlers.on_dataset_version_created(dataset_event(2, 300))  # the cut on demand the first run trains on
    handlers.on_features_materialized(features_event(2))
    handlers.on_dataset_version_created(dataset_event(3, 600))  # 600 rows since that cut
    handlers.on_features_materialized(features_event(3))
    assert len(published) == 1, "no follow-up while the change's first run is active"
    handlers.on_run_state_changed(run_event("r1", "completed"))
    handlers.on_model_promoted(promoted_event(2))  # the gate decided: the follow-up is due
    assert [e.payload.trigger for e in published] == ["performance", "followup"]
    followup = published[1]
    assert followup.payload.change_started_at == start
    assert followup.envelope.cascade_id == published[0].envelope.cascade_id
    assert followup.payload.dataset_version_id == f"{STREAM}@v3"
    handlers.on_dataset_version_created(dataset_event(4, 500))  # 1100 rows since the first cut
    handlers.on_features_materialized(features_event(4))
    assert len(published) == 2
    handlers.on_dataset_version_created(dataset_event(5, 500))  # 1600
    handlers.on_features_materialized(features_event(5))
    assert [e.payload.trigger for e in published][-1] == "followup" and len(published) == 3
    handlers.on_dataset_version_created(dataset_event(6, 5000))
    handlers.on_features_materialized(features_event(6))
    handlers.on_model_promoted(promoted_event(3))
    assert len(published) == 3, "the plan is bounded: two follow-ups"
    reasons = [d.payload.reason for d in decisions if d.payload.trigger == "followup"]
    assert len(reasons) == 2 and reasons[0].startswith("follow-up 1/2") and reasons[1].startswith("follow-up 2/2")
    assert "1600 rows landed" in reasons[1]


def test_without_followup_rows_a_change_is_retrained_once(make: Any, published: list[Event]) -> None:
    handlers: TriggerHandlers = make(with_triggers(cooldown=0))
    handlers.on_dataset_version_created(dataset_event(1, 1000))
    with_data_and_champion(handlers)
    handlers.on_performance_degraded(located_degradation(datetime(2026, 5, 1, 8, 0, tzinfo=UTC)))
    for version in (2, 3):
        handlers.on_dataset_version_created(dataset_event(version, 5000))
        handlers.on_features_materialized(features_event(version))
    assert [e.payload.trigger for e in published] == ["performance"]


def promoted_in(cascade_of: Event, version: int) -> Event:
    """The gate promoted ``version``, trained on the request ``cascade_of`` (its cascade)."""
    payload = replace(promoted_event(version).payload, previous_version=version - 1)
    return new_event(payload, producer="test", cause=cascade_of)


def threshold_alarm(version: int, start: datetime, reason: str = "threshold") -> Event:
    payload = PerformanceDegraded(
        model=MODEL,
        version=version,
        metric="roc_auc",
        value=0.77,
        threshold=0.96,
        window_size=200,
        reason=reason,
        window_start_time=start,
    )
    return new_event(payload, producer="test")


def with_performance_threshold(config: PipelineConfig, threshold: float) -> PipelineConfig:
    performance = config.monitor.performance.model_copy(update={"threshold": threshold, "metric": "roc_auc"})
    return config.model_copy(update={"monitor": config.monitor.model_copy(update={"performance": performance})})


CHANGE_AT = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


def change_requested(
    make: Any, published: list[Event], followup_rows: tuple[int, ...] = (500, 1500), threshold: float | None = None
) -> tuple[TriggerHandlers, Event]:
    """Handlers (no cooldown, these follow-ups, this AUC threshold) whose champion v1 degraded at a change located
    at ``CHANGE_AT``; and that change's first request."""
    config = with_triggers(cooldown=0, after_change={"followup_rows": list(followup_rows)})
    handlers: TriggerHandlers = make(with_performance_threshold(config, threshold) if threshold else config)
    handlers.on_dataset_version_created(dataset_event(1, 1000))
    with_data_and_champion(handlers)
    handlers.on_performance_degraded(located_degradation(CHANGE_AT))
    return handlers, published[0]


def test_an_alarm_about_a_model_the_change_plan_trained_folds_into_the_plan(
    make: Any, published: list[Event], decisions: list[Event]
) -> None:
    # One cause, one plan: the small first model of a change (v2) degrades; the alarm is coalesced into the plan
    # and brings its first follow-up forward, on the rows from the alarm's window on, in the change's cascade. It
    # does not start a plan of its own: the plan stays bounded (1 + 2 runs).
    handlers: TriggerHandlers = make(with_triggers(cooldown=0, after_change={"followup_rows": [500, 1500]}))
    handlers.on_dataset_version_created(dataset_event(1, 1000))
    with_data_and_champion(handlers)
    start = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    handlers.on_performance_degraded(located_degradation(start))
    first = published[0]
    handlers.on_run_state_changed(run_event("r1", "running"))
    handlers.on_dataset_version_created(dataset_event(2, 300))
    handlers.on_features_materialized(features_event(2))
    handlers.on_run_state_changed(run_event("r1", "completed"))
    handlers.on_model_promoted(promoted_in(first, 2))
    assert len(published) == 1, "100 rows landed since the cut: no follow-up yet"
    later = start + timedelta(minutes=10)
    alarm = threshold_alarm(2, later)
    handlers.on_performance_degraded(alarm)
    assert [e.payload.trigger for e in published] == ["performance", "followup"]
    followup = published[1]
    assert followup.payload.change_started_at == later
    assert followup.envelope.cascade_id == first.envelope.cascade_id
    (folded,) = [d.payload for d in decisions if d.envelope.caused_by == alarm.id]
    assert (folded.decision, folded.trigger, folded.version) == ("coalesced", "performance", 2)
    assert folded.request_id == first.payload.request_id and "folded into the change plan" in folded.note
    numbers = json.loads(folded.numbers_json)
    assert numbers["plan_versions"] == [2] and numbers["followups_done"] == 0 and numbers["brought_forward"]
    (row,) = [r for r in handlers.requests(MODEL, 20) if r["cause_event_id"] == alarm.id]
    assert (row["status"], row["merged_into"]) == ("coalesced", first.payload.request_id)
    # A drift alone of v2 (not degraded) folds too, and waits for the planned follow-up.
    drift = replace(drift_event(0), payload=replace(drift_event(0).payload, version=2, performance_degraded=False))
    handlers.on_drift_detected(drift)
    assert len(published) == 2
    (row,) = [r for r in handlers.requests(MODEL, 20) if r["cause_event_id"] == drift.id]
    assert (row["status"], row["merged_into"]) == ("coalesced", first.payload.request_id)
    # The follow-up's model (v3) is the plan's too: an alarm about it brings the last follow-up forward.
    handlers.on_model_promoted(promoted_in(followup, 3))
    handlers.on_performance_degraded(threshold_alarm(3, later + timedelta(minutes=1)))
    assert [e.payload.trigger for e in published] == ["performance", "followup", "followup"]
    handlers.on_dataset_version_created(dataset_event(3, 2000))
    handlers.on_features_materialized(features_event(3))
    assert len(published) == 3, "bounded: 1 + 2 runs for one change"


def test_an_alarm_about_the_champion_a_plan_replaces_folds_into_the_plan_when_the_gate_rejected_its_model(
    make: Any, published: list[Event], decisions: list[Event]
) -> None:
    # SEA's case: the change's first model (v2) is rejected by the gate, so v1 serves on; v1's threshold alarm,
    # read while that run trained, is the plan's change seen again: coalesced into the plan, and the plan's first
    # follow-up goes out as soon as the gate decided, on all the rows after the change, in the change's cascade.
    handlers: TriggerHandlers = make(with_triggers(cooldown=0, after_change={"followup_rows": [500, 1500]}))
    handlers.on_dataset_version_created(dataset_event(1, 1000))
    with_data_and_champion(handlers)
    start = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    handlers.on_performance_degraded(located_degradation(start))
    first = published[0]
    handlers.on_run_state_changed(run_event("r1", "running"))
    handlers.on_dataset_version_created(dataset_event(2, 300))
    handlers.on_features_materialized(features_event(2))
    alarm = threshold_alarm(1, start + timedelta(minutes=3))
    handlers.on_performance_degraded(alarm)
    assert len(published) == 1, "folded into the plan: no request of its own while the plan's run trains"
    (folded,) = [d.payload for d in decisions if d.envelope.caused_by == alarm.id]
    assert (folded.decision, folded.request_id) == ("coalesced", first.payload.request_id)
    assert "v1 is the champion it replaces" in folded.note and json.loads(folded.numbers_json)["brought_forward"]
    handlers.on_run_state_changed(run_event("r1", "completed"))
    handlers.on_model_rejected(rejected_event(2, champion=1))
    assert [e.payload.trigger for e in published] == ["performance", "followup"]
    followup = published[1]
    assert followup.payload.change_started_at == start, "v1 saw none of the change: all rows after it"
    assert followup.envelope.cascade_id == first.envelope.cascade_id
    # Another alarm about v1 while that follow-up trains: coalesced, nothing brought forward twice.
    handlers.on_performance_degraded(threshold_alarm(1, start + timedelta(minutes=4)))
    assert len(published) == 2
    # The follow-up's model (v3) is rejected too: v1 serves on, and its next degradation brings the last follow-up
    # forward (not the 1,500 planned rows later).
    handlers.on_run_state_changed(run_event("r2", "running"))
    handlers.on_run_state_changed(run_event("r2", "completed"))
    handlers.on_model_rejected(rejected_event(3, champion=1))
    assert len(published) == 2, "no alarm since: the plan waits"
    handlers.on_performance_degraded(threshold_alarm(1, start + timedelta(minutes=6)))
    assert [e.payload.trigger for e in published] == ["performance", "followup", "followup"]
    assert published[2].payload.change_started_at == start
    assert published[2].envelope.cascade_id == first.envelope.cascade_id


def test_a_change_located_in_a_plan_models_own_errors_is_a_new_change(
    make: Any, published: list[Event], decisions: list[Event]
) -> None:
    handlers, first = change_requested(make, published)
    handlers.on_dataset_version_created(dataset_event(2, 300))
    handlers.on_features_materialized(features_event(2))
    handlers.on_model_promoted(promoted_in(first, 2))
    again = CHANGE_AT + timedelta(hours=2)
    handlers.on_performance_degraded(threshold_alarm(2, again, reason="change"))
    assert [e.payload.trigger for e in published] == ["performance", "performance"]
    assert published[1].payload.change_started_at == again
    assert published[1].envelope.cascade_id != first.envelope.cascade_id, "a new cause, a new plan"


def promoted_at_gate(version: int, score: float, cascade_of: Event) -> Event:
    """``version`` promoted in the cascade of ``cascade_of``, trained on the cut v2, with its holdout ``score``."""
    event = promoted_in(cascade_of, version)
    gate = json.dumps({"challenger_score": score})
    return replace(event, payload=replace(event.payload, dataset_version_id=f"{STREAM}@v2", gate_json=gate))


def test_a_plan_model_weak_at_its_gate_brings_the_next_followup_forward_on_the_rows_it_never_saw(
    make: Any, published: list[Event], decisions: list[Event]
) -> None:
    # The change's first model trained on few rows of a change still under way: its holdout AUC misses the
    # monitor's threshold at the gate. The plan's first follow-up goes out at its promotion (not after a window of
    # its labels), on the rows landed after the cut it trained on.
    handlers, first = change_requested(make, published, threshold=0.9)
    cut = dataset_event(2, 300)
    handlers.on_dataset_version_created(cut)
    handlers.on_features_materialized(features_event(2))
    handlers.on_model_promoted(promoted_at_gate(2, 0.78, first))
    assert [e.payload.trigger for e in published] == ["performance", "followup"]
    assert published[1].payload.change_started_at == cut.envelope.occurred_at
    (decision,) = [d.payload for d in decisions if d.payload.trigger == "followup"]
    assert "brought forward by v2's gate: roc_auc 0.78" in decision.reason
    # Its model passes the threshold: the last follow-up waits for its rows, as planned.
    handlers.on_model_promoted(promoted_at_gate(3, 0.97, published[1]))
    assert len(published) == 2


def test_a_followup_brought_forward_at_a_gate_read_before_the_runs_completion_goes_out_with_the_completion(
    make: Any, published: list[Event]
) -> None:
    # The registry's ModelPromoted is often read before training's RunStateChanged "completed": the follow-up the
    # weak gate brought forward waits for the run to end, and goes out then (not with the next cut, a window later).
    handlers, first = change_requested(make, published, threshold=0.9)
    handlers.on_run_state_changed(run_event("r1", "running"))
    handlers.on_dataset_version_created(dataset_event(2, 300))
    handlers.on_features_materialized(features_event(2))
    completed = run_event("r1", "completed")  # made before the gate's decision, read after it
    handlers.on_model_promoted(promoted_at_gate(2, 0.78, first))
    assert len(published) == 1, "the run is still active when the gate's decision is read"
    handlers.on_run_state_changed(completed)
    assert [e.payload.trigger for e in published] == ["performance", "followup"]
    assert published[1].envelope.cascade_id == first.envelope.cascade_id


def test_an_alarm_about_a_completed_plans_model_retrains_once_on_the_rows_since_its_change(
    make: Any, published: list[Event], decisions: list[Event]
) -> None:
    # The hyperplane's case: a gradual change's follow-ups all came early, so the plan's last model trained on few
    # post-change rows and degrades later. One retrain on all the rows since the plan's change, and no new plan
    # (which would train on the rows of the alarm's window on, and retrain again and again).
    handlers, first = change_requested(make, published, followup_rows=(500,))
    handlers.on_dataset_version_created(dataset_event(2, 300))
    handlers.on_features_materialized(features_event(2))
    handlers.on_model_promoted(promoted_in(first, 2))
    handlers.on_performance_degraded(threshold_alarm(2, CHANGE_AT + timedelta(minutes=5)))
    followup = published[1]
    assert followup.payload.trigger == "followup"
    start = followup.payload.change_started_at  # v2 trained on the change under way: the plan's rows start later
    handlers.on_model_promoted(promoted_in(followup, 3))  # the plan's last model: the plan is done
    alarm = threshold_alarm(3, start + timedelta(minutes=30))
    handlers.on_performance_degraded(alarm)
    assert [e.payload.trigger for e in published] == ["performance", "followup", "performance"]
    once = published[2]
    assert once.payload.change_started_at == start, "on all the rows since the plan's change"
    (decision,) = [d.payload for d in decisions if d.envelope.caused_by == alarm.id]
    assert decision.decision == "retrain" and "completed change plan" in decision.note
    assert "no new plan" in decision.note
    for version in (3, 4):  # many rows land: no follow-up of a new plan
        handlers.on_dataset_version_created(dataset_event(version, 5000))
        handlers.on_features_materialized(features_event(version))
    assert len(published) == 3
    # Its model joins the plan: an alarm about it retrains once more the same way, still no plan.
    handlers.on_model_promoted(promoted_in(once, 4))
    handlers.on_performance_degraded(threshold_alarm(4, start + timedelta(minutes=50)))
    assert [e.payload.trigger for e in published][3:] == ["performance"]
    assert published[3].payload.change_started_at == start
    handlers.on_dataset_version_created(dataset_event(5, 5000))
    handlers.on_features_materialized(features_event(5))
    assert len(published) == 4
    # A change its own detector locates is new: a new plan, from that change.
    handlers.on_model_promoted(promoted_in(published[3], 5))
    again = start + timedelta(hours=3)
    handlers.on_performance_degraded(threshold_alarm(5, again, reason="change"))
    assert published[4].payload.change_started_at == again
    handlers.on_dataset_version_created(dataset_event(6, 300))
    handlers.on_features_materialized(features_event(6))
    handlers.on_dataset_version_created(dataset_event(7, 600))
    handlers.on_features_materialized(features_event(7))
    assert [e.payload.trigger for e in published][5:] == ["followup"], "the new change has its plan"
