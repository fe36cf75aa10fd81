"""The retrain policy as pure functions."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from driftloop.contracts.pipeline import AfterChangeSpec, DriftTrigger, NewDataTrigger, RetrainPolicy, TriggerSpec
from driftloop.services.triggers.policy import (
    Alarm,
    ChangePlan,
    ModelView,
    brought_forward_start,
    decide,
    fire_pending,
    fold_into_plan,
    followup_due,
    weak_at_gate,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
DATA = "transactions@v3"
POLICY = TriggerSpec(
    new_data=NewDataTrigger(enabled=True, only_without_champion=True),
    drift=DriftTrigger(enabled=True, wait_for_fresh_data=False),
    policy=RetrainPolicy(retrain_on=["drift", "performance"]),
    cooldown_seconds=60,
    queue_while_running=False,
)


def view(**changes: object) -> ModelView:
    base: dict[str, object] = {"has_champion": True, "latest_dataset_version_id": DATA}
    base.update(changes)
    return ModelView(**base)  # type: ignore[arg-type]


def test_new_data_only_without_champion() -> None:
    assert decide("new_data", POLICY, view(has_champion=False), NOW).status == "requested"
    decision = decide("new_data", POLICY, view(has_champion=True), NOW)
    assert decision.status == "suppressed"
    assert "champion" in decision.note
    always = POLICY.model_copy(update={"new_data": NewDataTrigger(enabled=True, only_without_champion=False)})
    assert decide("new_data", always, view(has_champion=True), NOW).status == "requested"


def test_disabled_kinds_are_suppressed() -> None:
    off = TriggerSpec(new_data=NewDataTrigger(enabled=False), drift=DriftTrigger(enabled=False))
    for kind in ("new_data", "drift"):
        decision = decide(kind, off, view(has_champion=False), NOW)  # type: ignore[arg-type]
        assert decision.status == "suppressed"
        assert "disabled" in decision.note
    assert decide("external", off, view(), NOW).status == "requested"


def test_drift_requests_at_once_or_waits_for_fresh_data() -> None:
    assert decide("drift", POLICY, view(), NOW).status == "requested"
    waiting = POLICY.model_copy(update={"drift": DriftTrigger(enabled=True, wait_for_fresh_data=True)})
    decision = decide("drift", waiting, view(), NOW)
    assert decision.status == "pending"
    assert "wait_for_fresh_data" in decision.note
    # fresh_data: change: a drift located in time goes to training at once (it cuts on demand after the change);
    # one without a located start still waits for the next cut.
    on_demand = POLICY.model_copy(
        update={"drift": DriftTrigger(enabled=True, wait_for_fresh_data=True, fresh_data="change")}
    )
    assert decide("drift", on_demand, view(), NOW, located=True).status == "requested"
    assert decide("drift", on_demand, view(), NOW, located=False).status == "pending"
    assert decide("drift", waiting, view(), NOW, located=True).status == "pending"


def test_cooldown_holds_a_cause_pending_then_expires() -> None:
    recent = view(last_request_at=NOW - timedelta(seconds=10))
    decision = decide("drift", POLICY, recent, NOW)
    assert (decision.status, decision.wait_for) == ("pending", "cooldown")
    assert "cooldown" in decision.note
    assert decide("drift", POLICY, view(last_request_at=NOW - timedelta(seconds=61)), NOW).status == "requested"


def test_active_run_merges_every_kind_including_manual() -> None:
    busy = view(has_champion=False, active_runs=("run-1",))
    for kind in ("new_data", "drift", "external", "manual"):
        decision = decide(kind, POLICY, busy, NOW)  # type: ignore[arg-type]
        assert decision.status == "suppressed"
        assert "run-1" in decision.note


def test_pending_request_absorbs_further_causes() -> None:
    decision = decide("drift", POLICY, view(pending_request_id="req-1"), NOW)
    assert decision.status == "coalesced"
    assert "req-1" in decision.note


def test_manual_skips_cooldown_and_pending_but_needs_data() -> None:
    busy = view(last_request_at=NOW - timedelta(seconds=1), pending_request_id="req-1")
    assert decide("manual", POLICY, busy, NOW).status == "requested"
    assert decide("manual", POLICY, view(latest_dataset_version_id=None), NOW).status == "suppressed"


def test_causes_before_any_data_wait_for_it() -> None:
    assert decide("external", POLICY, view(latest_dataset_version_id=None), NOW).status == "pending"


def test_fire_pending_waits_while_a_run_is_active() -> None:
    assert fire_pending(view()).status == "requested"
    assert fire_pending(view(active_runs=("run-2",))).status == "pending"


def test_queue_while_running_queues_alarms_and_coalesces_the_rest() -> None:
    queueing = POLICY.model_copy(update={"queue_while_running": True})
    decision = decide("drift", queueing, view(active_runs=("run-1",)), NOW)
    assert (decision.status, decision.wait_for) == ("pending", "run")
    gating = decide("drift", queueing, view(gating_runs=("run-1",)), NOW)
    assert (gating.status, gating.wait_for) == ("pending", "run")
    assert "gate" in gating.note
    merged = decide("external", queueing, view(active_runs=("run-1",), pending_request_id="req-1"), NOW)
    assert merged.status == "coalesced"


def test_alarm_about_a_former_champion_is_stale() -> None:
    decision = decide("drift", POLICY, view(champion_version=3), NOW, alarm=Alarm(version=2))
    assert decision.status == "stale"
    assert "v2" in decision.note and "v3" in decision.note
    assert decide("drift", POLICY, view(champion_version=2), NOW, alarm=Alarm(version=2)).status == "requested"


def test_default_policy_retrains_only_on_drift_that_hurts_performance() -> None:
    default = TriggerSpec(drift=DriftTrigger(wait_for_fresh_data=False))
    harmless = Alarm(version=1, performance_degraded=False, estimated_degraded=False)
    decision = decide("drift", default, view(champion_version=1), NOW, alarm=harmless)
    assert decision.status == "suppressed"
    assert decision.note.startswith("reported, not retrained")
    for confirmed in (Alarm(version=1, performance_degraded=True), Alarm(version=1, estimated_degraded=True)):
        assert decide("drift", default, view(champion_version=1), NOW, alarm=confirmed).status == "requested"
    only_measured = default.model_copy(update={"policy": RetrainPolicy(retrain_on=["drift_confirmed_by_performance"])})
    estimated = Alarm(version=1, estimated_degraded=True)
    assert decide("drift", only_measured, view(), NOW, alarm=estimated).status == "suppressed"
    # A degradation alone does not retrain there, but one confirming an earlier reported drift does.
    assert decide("performance", only_measured, view(), NOW, alarm=Alarm(version=1)).status == "suppressed"
    confirming = Alarm(version=1, unconfirmed_drift=True)
    assert decide("performance", only_measured, view(), NOW, alarm=confirming).status == "requested"


def test_cooldown_in_rows_and_in_event_time() -> None:
    rows = POLICY.model_copy(update={"cooldown_by": "rows", "cooldown_rows": 1000})
    base = {"last_request_at": NOW, "last_request_rows_total": 5000}
    assert decide("drift", rows, view(**base, rows_total=5999), NOW).status == "pending"
    assert decide("drift", rows, view(**base, rows_total=6000), NOW).status == "requested"
    by_time = POLICY.model_copy(update={"cooldown_by": "event_time", "cooldown_seconds": 3600})
    stamp = datetime(2020, 1, 1, tzinfo=UTC)
    seen = {"last_request_at": NOW, "last_request_event_time": stamp}
    # Wall time does not count: an hour of event time replayed in a second ends the cooldown.
    early = view(**seen, event_time=stamp + timedelta(minutes=59))
    assert decide("drift", by_time, early, NOW).status == "pending"
    assert decide("drift", by_time, view(**seen, event_time=stamp + timedelta(hours=1)), NOW).status == "requested"


def test_a_followup_is_due_once_its_rows_landed_and_nothing_runs() -> None:
    policy = POLICY.model_copy(update={"after_change": AfterChangeSpec(followup_rows=[500, 1500])})
    unclocked = ChangePlan("req-1", NOW - timedelta(hours=1), NOW)
    assert followup_due(POLICY, unclocked, view(rows_total=99_999)) is None  # no cut since the request yet
    plan = replace(unclocked, rows_at=10_000)
    assert followup_due(policy, plan, view(rows_total=10_499)) is None  # too few rows yet
    due = followup_due(policy, plan, view(rows_total=10_500))
    assert due is not None and due.startswith("follow-up 1/2") and "500 rows landed" in due
    assert followup_due(policy, plan, view(rows_total=11_000, active_runs=("r",))) is None
    assert followup_due(policy, plan, view(rows_total=11_000, gating_runs=("r",))) is None
    assert followup_due(policy, plan, view(rows_total=11_000, pending_request_id="p")) is None
    second = replace(plan, done=1)
    assert followup_due(policy, second, view(rows_total=11_000)) is None  # the second needs 1500
    assert followup_due(policy, second, view(rows_total=11_500)) is not None
    assert followup_due(policy, replace(plan, done=2), view(rows_total=99_999)) is None  # bounded
    assert followup_due(POLICY, plan, view(rows_total=99_999)) is None  # no follow-ups configured
    assert ChangePlan.from_json(second.to_json()) == second
    assert ChangePlan.from_json(unclocked.to_json()) == unclocked


def test_followup_rows_must_increase() -> None:
    with pytest.raises(ValidationError, match="must increase"):
        AfterChangeSpec(followup_rows=[1500, 500])


PLANNED = POLICY.model_copy(update={"after_change": AfterChangeSpec(followup_rows=[500, 1500])})
# A change plan whose first request trained v2 (promoted in its cascade), 10_000 rows on the row clock at its cut.
PLAN = ChangePlan("req-1", NOW - timedelta(hours=1), NOW - timedelta(minutes=50), 10_000, cascade_id="c", versions=(2,))


def test_an_alarm_about_a_version_trained_inside_the_active_plan_folds_into_it() -> None:
    weak = Alarm(version=2, performance_degraded=True, numbers={"value": 0.77})
    folded = fold_into_plan("performance", PLANNED, PLAN, weak)
    assert folded is not None and folded.status == "coalesced" and folded.followup_now
    assert "folded into the change plan of request req-1" in folded.note and "follow-up 1/2" in folded.note
    # decide() folds it even while the plan's run is active, before any queueing: one cause, one plan.
    busy = view(champion_version=2, active_runs=("r",))
    assert decide("performance", PLANNED, busy, NOW, alarm=weak, plan=PLAN) == folded
    # A drift alone of that version waits for the planned follow-up; a drift with a degradation brings it forward.
    drift = fold_into_plan("drift", PLANNED, PLAN, Alarm(version=2, performance_degraded=False))
    assert drift is not None and drift.status == "coalesced" and not drift.followup_now
    hurt = fold_into_plan("drift", PLANNED, PLAN, Alarm(version=2, performance_degraded=True))
    assert hurt is not None and hurt.followup_now
    # Brought forward once: a second alarm about the same version is coalesced without another follow-up.
    hurried = replace(PLAN, brought_forward_by="req-9", brought_forward_version=2)
    again = fold_into_plan("performance", PLANNED, hurried, weak)
    assert again is not None and not again.followup_now and "already brought forward by req-9" in again.note
    answered = replace(PLAN, brought_forward_version=2)  # a follow-up answering v2 went out already
    once = fold_into_plan("performance", PLANNED, answered, weak)
    assert once is not None and once.status == "coalesced" and not once.followup_now


def test_an_alarm_about_the_champion_the_plan_replaces_folds_into_it() -> None:
    # The gate rejected the plan's first model: v1, the champion the change was seen in, serves on and alarms again.
    # That is the plan's change seen again (even located by v1's own detector): no second plan.
    rejected = replace(PLAN, versions=(), replaces=1)
    again = Alarm(version=1, performance_degraded=True)
    folded = fold_into_plan("performance", PLANNED, rejected, again)
    assert folded is not None and folded.followup_now and "v1 is the champion it replaces" in folded.note
    located = fold_into_plan("performance", PLANNED, rejected, replace(again, detector_change=True))
    assert located is not None and located.followup_now
    assert decide("performance", PLANNED, view(champion_version=1), NOW, alarm=again, plan=rejected) == folded
    # Its follow-up trains on all the rows after the change (v1 saw none of them), not from the alarm's window on.
    cut = PLAN.change_started_at + timedelta(minutes=5)
    assert brought_forward_start(rejected, cut, 1) == PLAN.change_started_at
    assert brought_forward_start(rejected, cut, 2) == cut
    # Brought forward once for v1; and once the follow-ups are done, v1's alarms are causes of their own.
    hurried = replace(rejected, brought_forward_by="req-9", brought_forward_version=1)
    once = fold_into_plan("performance", PLANNED, hurried, again)
    assert once is not None and not once.followup_now
    assert fold_into_plan("performance", PLANNED, replace(rejected, done=2), again) is None
    assert ChangePlan.from_json(hurried.to_json()) == hurried


def test_an_alarm_is_a_cause_of_its_own_outside_an_active_plan_or_when_it_is_a_new_change() -> None:
    weak = Alarm(version=2, performance_degraded=True)
    assert fold_into_plan("performance", PLANNED, None, weak) is None  # no plan
    assert fold_into_plan("performance", PLANNED, replace(PLAN, done=2), weak) is None  # all follow-ups done
    assert fold_into_plan("performance", POLICY, PLAN, weak) is None  # no follow-ups configured: no active plan
    assert fold_into_plan("performance", PLANNED, PLAN, Alarm(version=1, performance_degraded=True)) is None
    # The version's own change detector located a rise of its errors against its own earlier ones: a new change.
    new_change = Alarm(version=2, performance_degraded=True, detector_change=True)
    assert fold_into_plan("performance", PLANNED, PLAN, new_change) is None
    assert decide("performance", PLANNED, view(champion_version=2), NOW, alarm=new_change, plan=PLAN).status == (
        "requested"
    )
    assert fold_into_plan("external", PLANNED, PLAN, None) is None  # not an alarm about a version
    # Rules 1-3 come first: an alarm about a former champion is stale, even if the plan trained it.
    stale = decide("performance", PLANNED, view(champion_version=3), NOW, alarm=weak, plan=PLAN)
    assert stale.status == "stale"


def test_a_brought_forward_followup_is_due_at_once_while_its_version_serves() -> None:
    hurried = replace(PLAN, brought_forward_by="req-9", brought_forward_version=2)
    due = followup_due(PLANNED, hurried, view(champion_version=2, rows_total=10_001))
    assert due is not None and due.startswith("follow-up 1/2") and "brought forward by req-9" in due
    assert followup_due(PLANNED, hurried, view(champion_version=2, active_runs=("r",))) is None
    # A newer champion answered the alarm already: back to the planned rows.
    assert followup_due(PLANNED, hurried, view(champion_version=3, rows_total=10_001)) is None
    assert followup_due(PLANNED, replace(hurried, done=2), view(champion_version=2)) is None  # bounded
    assert ChangePlan.from_json(hurried.to_json()) == hurried


def test_a_model_weak_at_its_gate_is_named_by_its_holdout_score_against_the_performance_threshold() -> None:
    why = weak_at_gate("roc_auc", 0.78, 0.96)
    assert why is not None and "roc_auc 0.78" in why and "below the performance threshold 0.96" in why
    assert weak_at_gate("roc_auc", 0.97, 0.96) is None
    assert weak_at_gate("rmse", 3.0, 2.0) is not None and weak_at_gate("rmse", 1.0, 2.0) is None  # lower is better
    assert weak_at_gate("roc_auc", None, 0.96) is None and weak_at_gate("roc_auc", 0.5, None) is None


def test_only_the_first_models_answer_moves_the_plans_rows_past_its_data() -> None:
    # The first model trained on the first rows after the located start (a gradual change may still have been under
    # way): its answer trains on the rows after its cut. A later model is weak for want of rows: keep them all.
    cut = PLAN.change_started_at + timedelta(minutes=5)
    assert brought_forward_start(PLAN, cut) == cut
    assert brought_forward_start(PLAN, PLAN.change_started_at - timedelta(minutes=5)) == PLAN.change_started_at
    assert brought_forward_start(PLAN, None) == PLAN.change_started_at
    assert brought_forward_start(replace(PLAN, done=1), cut) == PLAN.change_started_at
