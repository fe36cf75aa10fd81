"""The retrain policy as pure functions: given what is known about a model, what to do with a new cause.

Order of the rules (the first that applies decides):
1. the trigger kind is disabled in the pipeline (or new data arrives while a champion exists and
   ``new_data.only_without_champion``, or a drift of the predictions alone with ``drift.on_prediction_drift``
   false): suppressed;
2. a training run of the model is active: suppressed (merged into that run), or with ``queue_while_running``
   pending until the run ends (one queued request; later causes merge into it);
3. a request is already pending (waiting for fresh data or for the run to end): suppressed (merged into it);
4. within ``cooldown_seconds`` of the last request of the same kind: suppressed (a storm of drift alarms gives
   one retrain, but a drift right after the bootstrap new-data retrain is still acted on);
5. drift with ``wait_for_fresh_data``, or no dataset version materialized yet: pending until the next
   ``FeaturesMaterialized`` of the stream;
6. otherwise: requested.
Manual requests skip rules 1, 3 and 4 (a person asked), but not 2: one active run per model. The cooldown
starts at the last automatic request (a manual request does not restart it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from driftloop.contracts.pipeline import TriggerSpec

TriggerKind = Literal["new_data", "drift", "external", "manual", "schedule", "labels", "performance"]
Status = Literal["requested", "pending", "suppressed"]


@dataclass(frozen=True)
class ModelView:
    """What the triggers service knows about one model when a cause arrives."""

    has_champion: bool
    active_runs: tuple[str, ...] = ()
    # The last request of the kind being decided (the cooldown is per trigger kind).
    last_request_at: datetime | None = None
    pending_request_id: str | None = None
    latest_dataset_version_id: str | None = None


@dataclass(frozen=True)
class Decision:
    status: Status
    note: str
    # A pending decision waits for "data" (the next dataset version) or "run" (the active run to end).
    wait_for: Literal["data", "run"] | None = None


def decide(
    kind: TriggerKind, policy: TriggerSpec, view: ModelView, now: datetime, *, prediction_only: bool = False
) -> Decision:
    """What to do with one cause of kind ``kind`` for a model in state ``view`` at time ``now``.
    ``prediction_only``: a drift of the model's predictions with no feature drifted."""
    if kind == "new_data":
        if not policy.new_data.enabled:
            return Decision("suppressed", "new-data trigger disabled (triggers.new_data.enabled: false)")
        if policy.new_data.only_without_champion and view.has_champion:
            return Decision("suppressed", "the model has a champion and triggers.new_data.only_without_champion is set")
    if kind == "drift" and not policy.drift.enabled:
        return Decision("suppressed", "drift trigger disabled (triggers.drift.enabled: false)")
    if kind == "drift" and prediction_only and not policy.drift.on_prediction_drift:
        return Decision(
            "suppressed", "prediction drift alone does not retrain (triggers.drift.on_prediction_drift: false)"
        )
    if kind == "performance" and not policy.performance.enabled:
        return Decision("suppressed", "performance trigger disabled (triggers.performance.enabled: false)")
    if view.active_runs:
        runs = ", ".join(view.active_runs)
        # New data during a run is not queued: the next dataset version is a cause of its own.
        queueable = kind not in ("manual", "new_data")
        if queueable and policy.queue_while_running and view.pending_request_id is None:
            return Decision("pending", f"queued: training run {runs} is active; fires when it ends", "run")
        if kind != "manual" and view.pending_request_id is not None:
            return Decision("suppressed", f"merged into pending request {view.pending_request_id}")
        return Decision("suppressed", f"merged: training run {runs} is active")
    if kind != "manual":
        if view.pending_request_id is not None:
            return Decision("suppressed", f"merged into pending request {view.pending_request_id}")
        if view.last_request_at is not None:
            elapsed = (now - view.last_request_at).total_seconds()
            if elapsed < policy.cooldown_seconds:
                return Decision(
                    "suppressed",
                    f"cooldown: last request {elapsed:.0f}s ago, cooldown_seconds is {policy.cooldown_seconds:g}",
                )
    if view.latest_dataset_version_id is None:
        if kind == "manual":
            return Decision("suppressed", "no dataset version is materialized yet")
        return Decision("pending", "waiting for the first materialized dataset version", "data")
    if kind == "drift" and policy.drift.wait_for_fresh_data:
        return Decision("pending", "waiting for the next dataset version after the drift (wait_for_fresh_data)", "data")
    return Decision("requested", f"train on {view.latest_dataset_version_id}")


def fire_pending(view: ModelView) -> Decision:
    """Fresh data arrived for a model with a pending request: fire it unless a run is active (then it waits on)."""
    if view.active_runs:
        return Decision("pending", f"still waiting: training run {', '.join(view.active_runs)} is active")
    return Decision("requested", f"fresh data {view.latest_dataset_version_id} arrived")
