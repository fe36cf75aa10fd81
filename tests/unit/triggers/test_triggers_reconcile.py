"""The triggers' start-up reconcile: the champion from the registry, and a run held as active that ended while the
bus was away (its RunStateChanged lost) stops counting, so the request queued behind it fires."""

from __future__ import annotations

from typing import Any

from triggers_support import MODEL, drift_event, run_event, with_data_and_champion, with_triggers

from driftloop.contracts.events import Event
from driftloop.services.triggers.handlers import TriggerHandlers
from driftloop.services.triggers.reconcile import StateReconcile


def champion(version: int) -> dict[str, Any]:
    return {
        "version": version,
        "model_version": {
            "artifact_uri": f"file:///a/{version}",
            "artifact_sha256": "cd" * 32,
            "dataset_version_id": "tx@v1",
            "feature_set_uri": "file:///fs",
        },
    }


def test_a_run_that_ended_unseen_releases_the_queued_request(make: Any, published: list[Event]) -> None:
    handlers: TriggerHandlers = make(with_triggers(cooldown=0, queue_while_running=True))
    with_data_and_champion(handlers)
    handlers.on_run_state_changed(run_event("run-1", "running"))
    drift = drift_event(0)
    handlers.on_drift_detected(drift)
    assert published == [] and handlers.model_state(MODEL)["pending_request_id"] is not None
    runs = {"run-1": {"run_id": "run-1", "state": "running"}}
    reconcile = StateReconcile(
        handlers, handlers.Session, lambda _m: champion(1), lambda run_id: runs.get(run_id), [MODEL]
    )
    assert reconcile.reconcile_model(MODEL) == []  # still running, champion known: nothing to do

    # ... then it failed, and its RunStateChanged was lost with the broker (a completed run would hold the queue
    # until the registry's gate decides: see test_triggers_handlers)
    runs["run-1"]["state"] = "failed"
    assert reconcile.reconcile_model(MODEL) == ["run run-1 failed"]
    (requested,) = published
    assert requested.payload.trigger == "drift" and requested.envelope.caused_by == drift.id
    assert handlers.model_state(MODEL)["active_runs"] == []


def test_the_champion_comes_from_the_registry_and_an_unknown_run_is_over(make: Any) -> None:
    handlers: TriggerHandlers = make(with_triggers(cooldown=0))
    handlers.on_run_state_changed(run_event("run-gone", "running"))
    reconcile = StateReconcile(handlers, handlers.Session, lambda _m: champion(3), lambda _r: None, [MODEL])
    assert reconcile.reconcile_model(MODEL) == ["champion v3", "run run-gone failed"]
    state = handlers.model_state(MODEL)
    assert state["champion_version"] == 3 and state["active_runs"] == []
