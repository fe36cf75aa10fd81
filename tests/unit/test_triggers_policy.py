"""The retrain policy as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from driftloop.contracts.pipeline import DriftTrigger, NewDataTrigger, TriggerSpec
from driftloop.services.triggers.policy import ModelView, decide, fire_pending

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
DATA = "transactions@v3"
POLICY = TriggerSpec(
    new_data=NewDataTrigger(enabled=True, only_without_champion=True),
    drift=DriftTrigger(enabled=True, wait_for_fresh_data=False),
    cooldown_seconds=60,
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


def test_cooldown_suppresses_then_expires() -> None:
    recent = view(last_request_at=NOW - timedelta(seconds=10))
    decision = decide("drift", POLICY, recent, NOW)
    assert decision.status == "suppressed"
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
    assert decision.status == "suppressed"
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
