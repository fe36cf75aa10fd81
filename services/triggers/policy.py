"""The retrain policy as pure functions: given what is known about a model, what to do with a new cause.

Order of the rules (the first that applies decides):
1. an alarm (drift, performance) about a version that is no longer the champion: stale (never retrains);
2. the trigger kind is disabled in the pipeline (or new data arrives while a champion exists and
   ``new_data.only_without_champion``, or a drift of the predictions alone with ``drift.on_prediction_drift``
   false): suppressed;
3. the signal does not retrain by ``triggers.policy.retrain_on`` (e.g. a drift whose version's measured and
   estimated performance are intact): suppressed, "reported, not retrained", with the numbers;
4. a training run of the model is active or waits for the gate: pending until it ends (``queue_while_running``,
   the default; false: suppressed, merged into that run); a request already pending: coalesced into it;
5. a request is already pending (cooldown, fresh data or a run): coalesced into it;
6. the model cools down since its last automatic request (``cooldown_by``: wall time, event time or rows):
   pending until the cooldown ends, then fired once if still valid; a suppressed alarm is never lost;
7. drift with ``wait_for_fresh_data``, or no dataset version materialized yet: pending until the next
   ``FeaturesMaterialized`` of the stream;
8. otherwise: requested.
Manual requests skip rules 1-3, 5 and 6 (a person asked), but not 4: one active run per model. The cooldown starts
at the last automatic request (a manual request does not restart it).

After a located change (a request with a change start), ``followup_due`` says when to retrain again on the rows
after that same change (``triggers.after_change.followup_rows``): a bounded plan of the one cause, outside the
cooldown, never while a run is active or awaits the gate, nor while another request is pending.

One cause, one plan (``fold_into_plan``, rule 3b, after rules 1-3): an alarm about a version trained inside the
model's active change plan (a champion promoted in the plan's cascade, while follow-ups remain) is that same change
seen again, typically the small first model trained mid-transition of a gradual change: it is coalesced into the
plan instead of starting a new one. So is an alarm about the champion the plan replaces (the version the change was
seen in), which serves on when the gate rejected the plan's first model: the plan answers it already. A measured
degradation brings the plan's next follow-up forward (answering the plan's first model, it trains on the rows that
model never saw, landed after the cut it trained on: the change was still under way when its rows were taken; later
ones, and the replaced champion's, keep the plan's start, ``brought_forward_start``); a drift alone waits for the
planned follow-up. A plan's model weak already at its gate (``weak_at_gate``: its holdout score misses the monitor's
performance threshold) brings the next follow-up forward at its promotion, without waiting for a window of its
labels to say the same. A genuinely new change is told apart by the version's own change detector (a
``PerformanceDegraded`` with ``reason: change`` about a plan model): its labeled errors rose against its own earlier
errors, so the world moved again after it served well; that alarm is decided as any other and starts a new plan. So
does any alarm once the plan's follow-ups are all done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from driftloop.contracts.pipeline import TriggerSpec

TriggerKind = Literal[
    "new_data", "drift", "external", "manual", "schedule", "labels", "performance", "guard", "followup"
]
Status = Literal["requested", "pending", "coalesced", "suppressed", "stale"]
WaitFor = Literal["data", "run", "cooldown"]
# Kinds whose cause names a model version (an alarm about that version).
ALARM_KINDS = frozenset({"drift", "performance"})
# The note of a drift that was reported but not retrained on: a later degradation of that version confirms it.
UNCONFIRMED = "reported, not retrained"


@dataclass(frozen=True)
class Alarm:
    """What an alarm says about its version's performance (the policy's confirmation of a drift)."""

    version: int
    prediction_only: bool = False
    performance_degraded: bool | None = None
    estimated_degraded: bool | None = None
    # A drift of this version earlier reported without retraining (confirmed now by a degradation).
    unconfirmed_drift: bool = False
    # The version's own change detector located a rise of its labeled errors against its own earlier errors
    # (``PerformanceDegraded`` ``reason: change``): a new change, never folded into a change plan.
    detector_change: bool = False
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelView:
    """What the triggers service knows about one model when a cause arrives."""

    has_champion: bool
    active_runs: tuple[str, ...] = ()
    # The last automatic request (the cooldown is per model, all kinds).
    last_request_at: datetime | None = None
    pending_request_id: str | None = None
    latest_dataset_version_id: str | None = None
    champion_version: int | None = None
    # Runs that completed and wait for the gate's decision (promoted or rejected).
    gating_runs: tuple[str, ...] = ()
    # The stream's clocks now and at the last automatic request: rows landed, newest event time.
    rows_total: int = 0
    last_request_rows_total: int | None = None
    event_time: datetime | None = None
    last_request_event_time: datetime | None = None


@dataclass(frozen=True)
class Decision:
    status: Status
    note: str
    # A pending decision waits for "data" (the next dataset version), "run" (the active run and its gate to end)
    # or "cooldown" (the model's cooldown to end).
    wait_for: WaitFor | None = None
    # A coalesced alarm that brings the model's change plan's next follow-up forward (``fold_into_plan``).
    followup_now: bool = False


def cooldown_left(policy: TriggerSpec, view: ModelView, now: datetime) -> str | None:
    """Why the model still cools down (in the policy's unit), or None when it does not."""
    if view.last_request_at is None:
        return None
    if policy.cooldown_by == "rows":
        if view.last_request_rows_total is None or policy.cooldown_rows == 0:
            return None
        landed = view.rows_total - view.last_request_rows_total
        if landed < policy.cooldown_rows:
            return f"cooldown: {landed} rows landed since the last request, cooldown_rows is {policy.cooldown_rows}"
        return None
    if policy.cooldown_by == "event_time":
        if view.last_request_event_time is None or view.event_time is None:
            return None
        elapsed = (view.event_time - view.last_request_event_time).total_seconds()
        unit = "s of event time"
    else:
        elapsed = (now - view.last_request_at).total_seconds()
        unit = "s"
    if elapsed < policy.cooldown_seconds:
        return f"cooldown: last request {elapsed:.0f}{unit} ago, cooldown_seconds is {policy.cooldown_seconds:g}"
    return None


def retrains(kind: TriggerKind, policy: TriggerSpec, alarm: Alarm | None) -> str | None:
    """Why an alarm does not retrain by ``policy.policy.retrain_on`` (None: it does)."""
    signals = set(policy.policy.retrain_on)
    if kind == "drift":
        if "drift" in signals:
            return None
        if "drift_confirmed_by_performance" in signals and alarm is not None and alarm.performance_degraded:
            return None
        if "drift_confirmed_by_estimate" in signals and alarm is not None and alarm.estimated_degraded:
            return None
        measured = "unknown" if alarm is None or alarm.performance_degraded is None else "intact"
        estimated = "unknown" if alarm is None or alarm.estimated_degraded is None else "intact"
        return (
            f"{UNCONFIRMED}: measured performance {measured}, estimated performance {estimated} "
            f"(triggers.policy.retrain_on: {sorted(signals)})"
        )
    if kind in ("performance", "guard"):
        if "performance" in signals:
            return None
        if "drift_confirmed_by_performance" in signals and alarm is not None and alarm.unconfirmed_drift:
            return None
        return f"performance degradation alone does not retrain (triggers.policy.retrain_on: {sorted(signals)})"
    return None


def decide(
    kind: TriggerKind,
    policy: TriggerSpec,
    view: ModelView,
    now: datetime,
    *,
    prediction_only: bool = False,
    alarm: Alarm | None = None,
    located: bool = False,
    plan: ChangePlan | None = None,
) -> Decision:
    """What to do with one cause of kind ``kind`` for a model in state ``view`` at time ``now``.
    ``prediction_only``: a drift of the model's predictions with no feature drifted. ``alarm``: what a drift or
    performance alarm says about its version. ``plan``: the model's change plan (its last located change)."""
    stale = alarm is not None and view.champion_version is not None and alarm.version != view.champion_version
    if kind != "manual" and stale:
        assert alarm is not None
        return Decision(
            "stale", f"about v{alarm.version}, no longer the champion (v{view.champion_version} is): not acted on"
        )
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
    if kind in ("performance", "guard") and not policy.performance.enabled:
        return Decision("suppressed", "performance trigger disabled (triggers.performance.enabled: false)")
    not_retrained = retrains(kind, policy, alarm)
    if not_retrained is not None:
        return Decision("suppressed", not_retrained)
    folded = fold_into_plan(kind, policy, plan, alarm)
    if folded is not None:
        return folded
    busy = view.active_runs + view.gating_runs
    if busy:
        runs = ", ".join(busy)
        what = f"training run {runs} is active" if view.active_runs else f"run {runs} awaits the gate"
        # New data during a run is not queued: the next dataset version is a cause of its own.
        queueable = kind not in ("manual", "new_data")
        if kind != "manual" and view.pending_request_id is not None:
            return Decision("coalesced", f"coalesced into pending request {view.pending_request_id}")
        if queueable and policy.queue_while_running:
            return Decision("pending", f"queued: {what}; fires once when it ends, if still valid", "run")
        return Decision("suppressed", f"merged: {what}")
    if kind != "manual":
        if view.pending_request_id is not None:
            return Decision("coalesced", f"coalesced into pending request {view.pending_request_id}")
        cooling = cooldown_left(policy, view, now)
        if cooling is not None:
            if kind == "new_data":
                return Decision("suppressed", cooling)  # the next dataset version is a cause of its own
            return Decision("pending", f"{cooling}; fires once when it ends, if still valid", "cooldown")
    if view.latest_dataset_version_id is None:
        if kind == "manual":
            return Decision("suppressed", "no dataset version is materialized yet")
        return Decision("pending", "waiting for the first materialized dataset version", "data")
    if kind == "drift" and waits_for_next_cut(policy, located):
        return Decision("pending", "waiting for the next dataset version after the drift (wait_for_fresh_data)", "data")
    return Decision("requested", f"train on {view.latest_dataset_version_id}")


def waits_for_next_cut(policy: TriggerSpec, located: bool) -> bool:
    """Whether a drift waits for the next periodic cut (``wait_for_fresh_data``); a drift located in time with
    ``fresh_data: change`` does not: training cuts on demand after the change (``dataset.min_rows_after_change``)."""
    drift = policy.drift
    return drift.wait_for_fresh_data and not (located and drift.fresh_data == "change")


def fire_pending(view: ModelView) -> Decision:
    """Fresh data arrived for a model with a pending request: fire it unless a run is active (then it waits on)."""
    busy = view.active_runs + view.gating_runs
    if busy:
        return Decision("pending", f"still waiting: training run {', '.join(busy)} is active")
    return Decision("requested", f"fresh data {view.latest_dataset_version_id} arrived")


@dataclass(frozen=True)
class ChangePlan:
    """The follow-up retrains of a model's last located change (stored as JSON in its trigger state)."""

    request_id: str  # the change's first request
    change_started_at: datetime
    requested_at: datetime
    # The stream's rows landed (the triggers' row clock, which moves with each cut) at the first cut after the
    # request: the rows that request trained on, the clock's first reading that includes them. None until then.
    rows_at: int | None = None
    done: int = 0  # follow-ups requested so far
    # The change's cascade (its first request's): a champion promoted in it was trained inside the plan.
    cascade_id: str | None = None
    versions: tuple[int, ...] = ()  # those champions
    # An alarm (its request id) or a gate about one of them brought the next follow-up forward: due at once while
    # that version is champion (a newer champion answered it already). The version stays after the follow-up went
    # out: a later alarm about it brings nothing forward again.
    brought_forward_by: str | None = None
    brought_forward_version: int | None = None
    # The stream's newest cuts since the plan began (dataset version id, when cut), and when the cut the plan's
    # newest champion trained on was made: rows landed after it are rows that model never saw.
    cuts: tuple[tuple[str, datetime], ...] = ()
    data_cut_at: datetime | None = None
    # The champion the change was seen in, which the plan replaces: its alarms are the plan's change, seen again.
    replaces: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "change_started_at": self.change_started_at.isoformat(),
            "requested_at": self.requested_at.isoformat(),
            "rows_at": self.rows_at,
            "done": self.done,
            "cascade_id": self.cascade_id,
            "versions": list(self.versions),
            "brought_forward_by": self.brought_forward_by,
            "brought_forward_version": self.brought_forward_version,
            "cuts": [[version, at.isoformat()] for version, at in self.cuts],
            "data_cut_at": self.data_cut_at.isoformat() if self.data_cut_at else None,
            "replaces": self.replaces,
        }

    @classmethod
    def from_json(cls, stored: dict[str, Any] | None) -> ChangePlan | None:
        if not stored:
            return None
        return cls(
            request_id=str(stored["request_id"]),
            change_started_at=datetime.fromisoformat(stored["change_started_at"]),
            requested_at=datetime.fromisoformat(stored["requested_at"]),
            rows_at=None if stored.get("rows_at") is None else int(stored["rows_at"]),
            done=int(stored.get("done", 0)),
            cascade_id=stored.get("cascade_id"),
            versions=tuple(int(v) for v in stored.get("versions") or ()),
            brought_forward_by=stored.get("brought_forward_by"),
            brought_forward_version=stored.get("brought_forward_version"),
            cuts=tuple((str(v), datetime.fromisoformat(at)) for v, at in stored.get("cuts") or ()),
            data_cut_at=datetime.fromisoformat(stored["data_cut_at"]) if stored.get("data_cut_at") else None,
            replaces=None if stored.get("replaces") is None else int(stored["replaces"]),
        )

    def active(self, policy: TriggerSpec) -> bool:
        """Follow-ups of the change remain."""
        return self.done < len(policy.after_change.followup_rows)


def fold_into_plan(
    kind: TriggerKind, policy: TriggerSpec, plan: ChangePlan | None, alarm: Alarm | None
) -> Decision | None:
    """An alarm about a version trained inside the model's active change plan, or about the champion the plan
    replaces: coalesced into the plan (a degradation brings its next follow-up forward), or None when the alarm is a
    cause of its own (no active plan, a version the plan has nothing to do with, or a change a plan model's own
    change detector located: a new change)."""
    if kind not in ALARM_KINDS or alarm is None or plan is None or not plan.active(policy):
        return None
    # The replaced champion's errors rose already when the plan began: any alarm about it, located or not, is the
    # plan's change (it serves on while the gate rejects the plan's models).
    replaced = alarm.version == plan.replaces
    if not replaced and (alarm.version not in plan.versions or alarm.detector_change):
        return None
    steps = policy.after_change.followup_rows
    step = f"follow-up {plan.done + 1}/{len(steps)}"
    how = "is the champion it replaces" if replaced else "was trained inside it"
    into = (
        f"folded into the change plan of request {plan.request_id} (change at {plan.change_started_at.isoformat()}): "
        f"v{alarm.version} {how}"
    )
    degraded = kind == "performance" or bool(alarm.performance_degraded)
    if not degraded:
        return Decision("coalesced", f"{into}; its {step} at {steps[plan.done]} rows retrains on the rows after it")
    if plan.brought_forward_version == alarm.version:
        by = f" by {plan.brought_forward_by}" if plan.brought_forward_by else ""
        return Decision("coalesced", f"{into}; a follow-up answering v{alarm.version} was already brought forward{by}")
    rows = "on the rows after the change" if replaced else "on the rows from this alarm's window on"
    return Decision("coalesced", f"{into} and is degraded: {step} brought forward, {rows}", followup_now=True)


def retrains_after_plan(kind: TriggerKind, policy: TriggerSpec, plan: ChangePlan | None, alarm: Alarm | None) -> bool:
    """A degradation of a model the model's completed change plan trained, not a new change its own detector
    located: the plan's change still, seen in a model trained on too few of its rows (its follow-ups came early).
    It retrains once, on all the rows since the plan's change, and starts no new plan (a new plan would train on
    the rows from this alarm's window on only, and retrain three times more on a stream that no longer changes)."""
    return (
        kind == "performance"
        and alarm is not None
        and plan is not None
        and not plan.active(policy)
        and not alarm.detector_change
        and alarm.version in plan.versions
    )


def continues_completed_plan(
    policy: TriggerSpec, plan: ChangePlan | None, version: int | None, change_started_at: datetime | None
) -> bool:
    """A request that ``retrains_after_plan`` made: on the completed plan's own change, answering one of its models.
    It starts no plan of its own; the model it trains joins the plan, so that an alarm about that model is decided
    the same way."""
    return (
        plan is not None
        and not plan.active(policy)
        and version in plan.versions
        and change_started_at == plan.change_started_at
    )


def brought_forward_start(plan: ChangePlan, after: datetime | None, version: int | None = None) -> datetime:
    """Where a follow-up brought forward by ``version`` starts its rows. Answering the plan's first model (no
    follow-up yet), which trained on the first rows after the located start while the change may still have been
    under way: the rows after its data (``after``: the cut it trained on), never before the change. Later models are
    weak for want of rows, not of the concept, and the replaced champion saw none of the change: their follow-up
    keeps the plan's start (a growing post-change window)."""
    if plan.done > 0 or after is None or (version is not None and version == plan.replaces):
        return plan.change_started_at
    return max(plan.change_started_at, after)


def weak_at_gate(metric: str, score: float | None, threshold: float | None) -> str | None:
    """Why a model of the change plan is weak already at its gate (its holdout ``score`` in the monitor's performance
    ``metric`` misses the monitor's ``threshold``: the window it trained on still mixed the old concept in), or None.
    Its next follow-up is then brought forward: no need to wait for a window of labels to say what the gate knew."""
    if score is None or threshold is None:
        return None
    lower_is_better = metric in ("rmse", "mae")
    if (score > threshold) if lower_is_better else (score < threshold):
        relation = "above" if lower_is_better else "below"
        return f"gate: {metric} {score:.4g} on its holdout, {relation} the performance threshold {threshold:.4g}"
    return None


def followup_due(policy: TriggerSpec, plan: ChangePlan | None, view: ModelView) -> str | None:
    """The reason for the next follow-up retrain of the change in ``plan`` if it is due now, else None: none
    planned or all done, too few rows landed since the first cut after the change's first request, a run active
    or awaiting the gate, another request pending, or no dataset version yet (it is looked at again with the next
    version or gate)."""
    steps = policy.after_change.followup_rows
    if plan is None or plan.done >= len(steps):
        return None
    if view.active_runs or view.gating_runs or view.pending_request_id is not None:
        return None
    if view.latest_dataset_version_id is None:
        return None
    if plan.brought_forward_by is not None and plan.brought_forward_version == view.champion_version:
        return (
            f"follow-up {plan.done + 1}/{len(steps)} of the change at {plan.change_started_at.isoformat()} "
            f"(request {plan.request_id}), brought forward by {plan.brought_forward_by} (an alarm about a version "
            f"trained inside the plan): train again on the rows from its window on"
        )
    if plan.rows_at is None:
        return None
    landed = view.rows_total - plan.rows_at
    if landed < steps[plan.done]:
        return None
    return (
        f"follow-up {plan.done + 1}/{len(steps)} of the change at {plan.change_started_at.isoformat()} "
        f"(request {plan.request_id}): {landed} rows landed since the data it trained on "
        f"(triggers.after_change.followup_rows {steps}); train again on the rows after the change"
    )
