"""The triggers service's handlers: keep per-stream and per-model state, decide by policy, emit requests.

Every decision (requested, pending, coalesced, suppressed, stale) is a ``TrainingRequest`` row AND a
``RetrainDecision`` event on the timeline, with its numbers; so is every pending request that fires later, goes
stale, and every rollback by the guard. A decision and its events go together: they are published inside the
database transaction, so a failed publish rolls the decision back and the cause is handled again later; the
request id is derived from the model and the cause event id, so a repeat after a crash between publish and commit
carries the same idempotency key.

Coalescing: a cause arriving while the model cools down, or while a run is active or waits for the gate, becomes
one pending request (later causes are coalesced into it, with the earliest change start); it fires once when the
cooldown ends (seen by ``check_due`` on the schedule tick, by new rows or a newer event time landing, or by the next
cause) or the gate decided, if it is still valid: a pending alarm about a version that is no longer champion goes
stale instead. Pending state is in the database, so a restart loses no cause.

Guard: a ``PerformanceDegraded`` with ``reason: guard`` about the current champion rolls it back through the
registry's API (``POST /v1/models/{name}/rollback`` to the previous champion), then the policy decides about a
retrain like for any degradation.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, overload

import sqlalchemy as sa
from croniter import croniter
from sqlalchemy.orm import Session, sessionmaker

from driftloop.clients.db.models import TrainingRequest, TriggerModelState, TriggerStreamState, utcnow
from driftloop.contracts.aliases import CHAMPION
from driftloop.contracts.events import Envelope, Event, new_event
from driftloop.contracts.layout import parse_dataset_version_id
from driftloop.contracts.payloads import (
    DatasetVersionCreated,
    DriftDetected,
    ExternalTrigger,
    FeaturesMaterialized,
    FeedbackReceived,
    ModelPromoted,
    ModelRejected,
    Payload,
    PerformanceDegraded,
    RetrainDecision,
    RunStateChanged,
    TrainingRequested,
)
from driftloop.contracts.pipeline import PipelineConfig, pipeline_for_model
from driftloop.errors import ConflictError, DriftloopError

from .policy import (
    UNCONFIRMED,
    Alarm,
    ChangePlan,
    Decision,
    ModelView,
    TriggerKind,
    brought_forward_start,
    continues_completed_plan,
    cooldown_left,
    decide,
    fire_pending,
    fold_into_plan,
    followup_due,
    retrains_after_plan,
    waits_for_next_cut,
    weak_at_gate,
)

log = logging.getLogger(__name__)

ACTIVE_RUN_STATES = frozenset({"pending", "running"})
FINISHED_RUN_STATES = frozenset({"completed", "failed", "aborted", "skipped"})
# Namespace of request ids derived from (model, cause event id).
REQUEST_NAMESPACE = uuid.UUID("5b0c56f4-5d0e-4d8c-9a4c-0c7d1f6b2a11")
# How often the schedule loop looks at the cron expressions and due pending requests (fired within this many s).
SCHEDULE_TICK_SECONDS = 5.0
# A completed run whose gate decision never arrives (e.g. its registration failed) stops holding causes after this.
GATE_TIMEOUT_SECONDS = 120.0
# The RetrainDecision name of each request status.
DECISION_NAMES = {
    "requested": "retrain",
    "pending": "pending",
    "coalesced": "coalesced",
    "suppressed": "suppressed",
    "stale": "stale",
}
# Cuts a change plan remembers (where the data of the models it trains ends).
PLAN_CUTS_KEPT = 8
# Rolls the champion of a model back to a version (why): the registry's rollback route; returns its answer.
Rollback = Callable[[str, int, str], dict[str, Any]]


class RetrainConflict(ConflictError):
    """A manual retrain cannot be requested now (no data yet, or a run is active)."""

    default_code = "retrain_conflict"


class RunInProgress(RetrainConflict):
    """A manual retrain refused because a run of the model is active or awaits the gate: ask again when it ends."""

    default_code = "run_in_progress"


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they are UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def request_id_for(model: str, cause_event_id: str) -> str:
    return str(uuid.uuid5(REQUEST_NAMESPACE, f"{model}:{cause_event_id}"))


class TriggerHandlers:
    def __init__(
        self,
        pipelines: Mapping[str, PipelineConfig],
        Session: sessionmaker[Session],
        publish: Callable[[Event[Payload]], None],
        producer: str = "triggers",
        clock: Callable[[], datetime] = utcnow,
        rollback: Rollback | None = None,
    ) -> None:
        self.pipelines = pipelines
        self.Session = Session
        self.publish = publish
        self.producer = producer
        self.clock = clock
        self.rollback = rollback
        # Decisions read and write per-model state: one at a time (consumer thread and HTTP threads).
        self._lock = threading.Lock()

    # --- state events ------------------------------------------------------------------------------------

    def on_model_promoted(self, event: Event[ModelPromoted]) -> None:
        """The champion changed: the gate decided (causes queued behind the run may fire) and pending alarms
        about any other version are stale."""
        promoted = event.payload
        if promoted.alias != CHAMPION:
            return
        with self._lock, self.Session.begin() as session:
            state = self._model_state(session, promoted.model)
            state.champion_version = promoted.version
            state.gating_runs = []
            _gate_decided(state, event)
            pipeline = self.pipelines.get(promoted.model)
            _note_plan_version(state, event, pipeline)
            if pipeline is None:
                return
            session.flush()
            for pending in self._pending_rows(session, promoted.model):
                if pending.version is not None and pending.version != promoted.version:
                    note = f"about v{pending.version}; v{promoted.version} is champion now (event {event.id})"
                    self._close_pending(session, pending, "stale", note, event)
            self._fire_queued(session, pipeline, event)
            self._fire_followup(session, pipeline, event)

    def on_model_rejected(self, event: Event[ModelRejected]) -> None:
        # The gate kept the champion: if the event names one, the model has a champion. The gate decided.
        rejected = event.payload
        with self._lock, self.Session.begin() as session:
            state = self._model_state(session, rejected.model)
            if rejected.champion_version is not None:
                state.champion_version = rejected.champion_version
            state.gating_runs = []
            _gate_decided(state, event)
            _reopen_plan_for_kept_champion(state, self.pipelines.get(rejected.model))
            if rejected.model in self.pipelines:
                session.flush()
                self._fire_queued(session, self.pipelines[rejected.model], event)
                self._fire_followup(session, self.pipelines[rejected.model], event)

    def on_run_state_changed(self, event: Event[RunStateChanged]) -> None:
        """Active runs; a completed run awaits the gate (ModelPromoted/ModelRejected) before queued causes fire,
        so that they are judged against the champion the gate chose."""
        changed = event.payload
        model, run_id, state = changed.model, changed.run_id, changed.state
        with self._lock, self.Session.begin() as session:
            model_state = self._model_state(session, model)
            runs = [r for r in model_state.active_runs if r != run_id]
            if state in ACTIVE_RUN_STATES:
                runs.append(run_id)
            elif state not in FINISHED_RUN_STATES:
                # Not active (e.g. a request the training service dropped): it holds no cause back.
                log.warning("triggers: run %s of %s in unknown state %r: taken as not active", run_id, model, state)
            if state == "completed" and run_id in model_state.active_runs:
                decided = as_utc(model_state.gate_decided_at)
                if decided is not None and decided >= event.envelope.occurred_at:
                    # The gate's decision on this run was read first (another topic): nothing left to wait for.
                    log.info("triggers: run %s of %s completed; the gate decided already", run_id, model)
                else:
                    model_state.gating_runs = [*(model_state.gating_runs or []), [run_id, self.clock().isoformat()]]
            model_state.active_runs = runs
            model_state.updated_at = utcnow()
            if event.envelope.caused_by is not None:
                # Training has the request this run answers: the outbox never sends it again (outbox.py).
                session.execute(
                    sa.update(TrainingRequest)
                    .where(
                        TrainingRequest.event_id == event.envelope.caused_by, TrainingRequest.acknowledged_at.is_(None)
                    )
                    .values(acknowledged_at=utcnow())
                )
            if model in self.pipelines:
                session.flush()
                self._fire_queued(session, self.pipelines[model], event)
                # A gate read before this completion may have brought a follow-up forward that waited for the run.
                self._fire_followup(session, self.pipelines[model], event)

    def on_dataset_version_created(self, event: Event[DatasetVersionCreated]) -> None:
        """Count new rows per stream (``triggers.new_data.every_n_rows``, cooldowns in rows) and follow the
        stream's event time (cooldowns in event time)."""
        created = event.payload
        with self._lock, self.Session.begin() as session:
            row = session.get(TriggerStreamState, created.stream)
            if row is None:
                # Not materialized yet: the state row is created by FeaturesMaterialized; keep the count.
                row = TriggerStreamState(
                    stream=created.stream,
                    dataset_version_id="",
                    event_id=event.id,
                    materialized_at=event.envelope.occurred_at,
                    rows_since_request=0,
                    rows_total=0,
                )
                session.add(row)
            row.rows_since_request = int(row.rows_since_request or 0) + created.new_rows
            row.rows_total = int(row.rows_total or 0) + created.new_rows
            _advance_event_time(row, created.max_event_time)
            row.updated_at = utcnow()
            session.flush()
            for pipeline in self.pipelines.values():
                if pipeline.stream.name == created.stream:
                    self._start_change_clock(session, pipeline.model.name, row.rows_total, event)
                    self._fire_cooled_down(session, pipeline, event)

    # --- causes ------------------------------------------------------------------------------------------

    def on_features_materialized(self, event: Event[FeaturesMaterialized]) -> None:
        materialized = event.payload
        stream, dataset_version_id = materialized.stream, materialized.dataset_version_id
        pipeline = next((p for p in self.pipelines.values() if p.stream.name == stream), None)
        with self._lock, self.Session.begin() as session:
            self._record_dataset(session, event)
            if pipeline is None:
                log.warning("triggers: features of stream %r, which no pipeline here trains on", stream)
                return
            model = pipeline.model.name
            if self._already_decided(session, model, event.id):
                return
            fired = self._fire_pending(session, pipeline, event)
            if fired is not None:
                self._record(session, model, "new_data", event, f"new dataset version {dataset_version_id}", fired)
                return
            view = self._view(session, pipeline, "new_data")
            decision = decide("new_data", pipeline.triggers, view, self.clock())
            stream_state = session.get(TriggerStreamState, stream)
            every = pipeline.triggers.new_data.every_n_rows
            new_rows = int(stream_state.rows_since_request or 0) if stream_state else 0
            if decision.status != "suppressed" and every and new_rows < every:
                decision = Decision(
                    "suppressed", f"{new_rows} new rows since the last request, every_n_rows is {every}"
                )
            reason = f"new dataset version {dataset_version_id} ({materialized.row_count} rows, {new_rows} new)"
            self._record(session, model, "new_data", event, reason, decision, view.latest_dataset_version_id)
            if decision.status == "requested" and stream_state is not None:
                stream_state.rows_since_request = 0
            if decision.status != "requested":
                session.flush()
                self._fire_followup(session, pipeline, event)

    def on_drift_detected(self, event: Event[DriftDetected]) -> None:
        drift = event.payload
        features = list(drift.drifted_features)
        prediction = drift.prediction_drifted
        test = drift.prediction_test
        what = ", ".join(features) if features else ("" if prediction else "none")
        if prediction:
            ks, psi = (test.statistic, test.psi) if test is not None else (math.nan, math.nan)
            shift = f"predictions (ks={ks:.3f}, psi={psi:.3f})"
            what = f"{what} and {shift}" if what else shift
        reason = f"drift of v{drift.version} in window {drift.window_index}: {what}"
        if drift.shift_started_time is not None:
            reason += f" (shifted from {drift.shift_started_time.isoformat()} on)"
        alarm = Alarm(
            version=drift.version,
            prediction_only=prediction and not features,
            performance_degraded=drift.performance_degraded,
            estimated_degraded=drift.estimated_degraded,
            numbers=_numbers(
                window_index=drift.window_index,
                window_size=drift.window_size,
                drifted_features=list(drift.drifted_features),
                performance_metric=drift.performance_metric,
                performance_value=drift.performance_value,
                performance_degraded=drift.performance_degraded,
                estimated_metric=drift.estimated_metric,
                estimated_value=drift.estimated_value,
                estimated_reference=drift.estimated_reference,
                estimated_degraded=drift.estimated_degraded,
            ),
        )
        self._on_cause(
            "drift",
            event,
            reason,
            prediction_only=prediction and not features,
            alarm=alarm,
            # Where the shift began inside the window, when the monitor located it: training waits for rows after
            # the shift, not after the window's start.
            window=(drift.shift_started_time or drift.window_start_time, drift.window_end_time),
        )

    def on_external_trigger(self, event: Event[ExternalTrigger]) -> None:
        self._on_cause("external", event, event.payload.reason or "external trigger")

    def on_performance_degraded(self, event: Event[PerformanceDegraded]) -> None:
        degraded = event.payload
        guard = degraded.reason == "guard" and degraded.previous_version is not None
        if guard:
            reason = (
                f"guard: v{degraded.version} {degraded.metric} {degraded.value:.4g} vs previous champion "
                f"v{degraded.previous_version} {degraded.previous_value:.4g} on the same "
                f"{degraded.window_size} labeled predictions (threshold {degraded.threshold:.4g})"
            )
        elif degraded.reason == "change":
            began = degraded.window_start_time.isoformat() if degraded.window_start_time else "unknown"
            reason = (
                f"change in v{degraded.version}'s labeled errors: {degraded.metric} {degraded.threshold:.4g} -> "
                f"{degraded.value:.4g} over the last {degraded.window_size} labeled predictions (began at {began})"
            )
        else:
            reason = (
                f"performance of v{degraded.version}: {degraded.metric} {degraded.value:.4g} past the threshold "
                f"{degraded.threshold:.4g} over {degraded.window_size} labeled predictions"
            )
        numbers = _numbers(
            metric=degraded.metric,
            value=degraded.value,
            threshold=degraded.threshold,
            window_size=degraded.window_size,
            previous_version=degraded.previous_version,
            previous_value=degraded.previous_value,
        )
        alarm = Alarm(
            version=degraded.version,
            performance_degraded=True,
            detector_change=degraded.reason == "change",
            numbers=numbers,
        )
        window = (degraded.window_start_time, degraded.window_end_time)
        if guard:
            self._on_guard(event, reason, alarm, window)
            return
        self._on_cause("performance", event, reason, alarm=alarm, window=window)

    def on_feedback_received(self, event: Event[FeedbackReceived]) -> None:
        """Count labels per model; every ``triggers.labels.every_n_labels`` labels is one cause (the last label's
        event), decided by the policy. The count restarts at every decision, so labels arriving during a
        cooldown or an active run merge into that decision instead of asking again with each label."""
        model = event.payload.model
        pipeline = self.pipelines.get(model)
        if pipeline is None or pipeline.triggers.labels.every_n_labels == 0:
            return
        every = pipeline.triggers.labels.every_n_labels
        with self._lock, self.Session.begin() as session:
            state = self._model_state(session, model)
            state.labels_since_request = int(state.labels_since_request or 0) + 1
            if state.labels_since_request < every:
                return
            state.labels_since_request = 0
            if self._already_decided(session, model, event.id):
                return
            view = self._view(session, pipeline, "labels")
            decision = decide("labels", pipeline.triggers, view, self.clock())
            reason = f"{every} labels received (the last for request {event.payload.request_id})"
            self._record(session, model, "labels", event, reason, decision, view.latest_dataset_version_id)

    def check_schedules(self) -> list[str]:
        """Fire each model's cron slot that has passed since the last one handled (at most one request per slot,
        and one for several missed slots); the first check after a schedule is configured only starts the
        clock. The request ids of requested decisions."""
        fired: list[str] = []
        now = self.clock()
        for model, pipeline in self.pipelines.items():
            cron = pipeline.triggers.schedule.cron
            if cron is None:
                continue
            slot = croniter(cron, now).get_prev(datetime)
            with self._lock, self.Session.begin() as session:
                state = self._model_state(session, model)
                last = as_utc(state.last_schedule_slot)
                if last is not None and slot <= last:
                    continue
                state.last_schedule_slot = slot
                if last is None:
                    log.info("triggers: schedule %r of %s starts; last slot %s", cron, model, slot.isoformat())
                    continue
                request_id = request_id_for(model, f"schedule:{slot.isoformat()}")
                if session.get(TrainingRequest, request_id) is not None:
                    continue
                view = self._view(session, pipeline, "schedule")
                decision = decide("schedule", pipeline.triggers, view, now)
                reason = f"schedule {cron!r}: slot {slot.isoformat()}"
                row = self._record(
                    session, model, "schedule", None, reason, decision, view.latest_dataset_version_id, request_id
                )
                if row.status == "requested":
                    fired.append(row.request_id)
        return fired

    def schedule_loop(self, stop: threading.Event, interval: float = SCHEDULE_TICK_SECONDS) -> None:
        """The service's background loop: check the cron schedules until ``stop`` is set."""
        while not stop.wait(interval):
            try:
                self.check_schedules()
                self.check_due()
            except Exception:  # a database hiccup must not end the loop
                log.exception("triggers: schedule check failed")

    def _on_cause(
        self,
        kind: TriggerKind,
        event: Event[DriftDetected] | Event[ExternalTrigger] | Event[PerformanceDegraded],
        reason: str,
        *,
        prediction_only: bool = False,
        alarm: Alarm | None = None,
        window: tuple[datetime | None, datetime | None] = (None, None),
    ) -> None:
        model = event.payload.model
        with self._lock, self.Session.begin() as session:
            if self._already_decided(session, model, event.id):
                return
            if model not in self.pipelines:
                note = f"unknown model {model!r}; known models: {sorted(self.pipelines)}"
                log.warning("triggers: %s for %s", kind, note)
                self._record(session, model, kind, event, reason, Decision("suppressed", note))
                return
            pipeline = self.pipelines[model]
            self._fire_cooled_down(session, pipeline, event)
            if alarm is not None and kind == "performance":
                alarm = replace(
                    alarm,
                    performance_degraded=True,
                    unconfirmed_drift=self._has_unconfirmed_drift(session, model, alarm.version),
                )
            view = self._view(session, pipeline)
            state = session.get(TriggerModelState, model)
            plan = ChangePlan.from_json(state.change_plan if state is not None else None)
            decision = decide(
                kind,
                pipeline.triggers,
                view,
                self.clock(),
                prediction_only=prediction_only,
                alarm=alarm,
                located=window[0] is not None,
                plan=plan,
            )
            if (
                decision.status == "coalesced"
                and plan is not None
                and fold_into_plan(kind, pipeline.triggers, plan, alarm)
            ):
                self._fold_into_plan(session, pipeline, kind, event, reason, decision, plan, alarm, window[0])
                return
            if plan is not None and alarm is not None and retrains_after_plan(kind, pipeline.triggers, plan, alarm):
                window = (plan.change_started_at, window[1])
                if decision.status in ("requested", "pending"):
                    once = (
                        f"v{alarm.version} was trained inside the completed change plan of request {plan.request_id}: "
                        f"one retrain on the rows since its change at {plan.change_started_at.isoformat()}, no new plan"
                    )
                    decision = replace(decision, note=f"{decision.note}; {once}")
            self._record(
                session,
                model,
                kind,
                event,
                reason,
                decision,
                view.latest_dataset_version_id,
                alarm=alarm,
                change_started_at=window[0],
            )

    def _fold_into_plan(
        self,
        session: Session,
        pipeline: PipelineConfig,
        kind: TriggerKind,
        event: Event[Payload],
        reason: str,
        decision: Decision,
        plan: ChangePlan,
        alarm: Alarm | None,
        window_start: datetime | None,
    ) -> None:
        """An alarm about a version trained inside the active change plan, or about the champion it replaces:
        recorded as coalesced into the plan's first request, with the plan's numbers; a degradation brings the next
        follow-up forward (``brought_forward_start`` says on which rows)."""
        model = pipeline.model.name
        steps = pipeline.triggers.after_change.followup_rows
        numbers = {
            **(alarm.numbers if alarm is not None else {}),
            "plan_request_id": plan.request_id,
            "plan_versions": list(plan.versions),
            "followups_done": plan.done,
            "followups_planned": len(steps),
            "brought_forward": decision.followup_now,
        }
        folded = replace(alarm, numbers=numbers) if alarm is not None else None
        row = self._record(
            session,
            model,
            kind,
            event,
            reason,
            decision,
            alarm=folded,
            change_started_at=window_start,
            merged_into=plan.request_id,
        )
        if not decision.followup_now:
            return
        state = self._model_state(session, model)
        # The first model's answer trains on the rows it never saw: landed after the cut it trained on (else from the
        # alarm's window on).
        version = alarm.version if alarm is not None else None
        starts = brought_forward_start(plan, plan.data_cut_at or as_utc(window_start), version)
        state.change_plan = replace(
            plan,
            change_started_at=starts,
            brought_forward_by=row.request_id,
            brought_forward_version=version,
        ).to_json()
        session.flush()
        self._fire_followup(session, pipeline, event)

    def _on_guard(
        self,
        event: Event[PerformanceDegraded],
        reason: str,
        alarm: Alarm,
        window: tuple[datetime | None, datetime | None],
    ) -> None:
        """The new champion is worse than the previous one on the same traffic: roll it back (registry API), then
        let the policy decide about a retrain (the rolled-back champion served the same traffic worse)."""
        degraded = event.payload
        model = degraded.model
        with self._lock, self.Session.begin() as session:
            if self._already_decided(session, model, event.id) or model not in self.pipelines:
                return
            pipeline = self.pipelines[model]
            view = self._view(session, pipeline)
            numbers = alarm.numbers
            if view.champion_version is not None and view.champion_version != degraded.version:
                decision = Decision(
                    "stale", f"about v{degraded.version}, no longer the champion (v{view.champion_version} is)"
                )
                self._record(session, model, "guard", event, reason, decision, alarm=alarm)
                return
            to = int(degraded.previous_version or 0)
            try:
                if self.rollback is None:
                    raise DriftloopError("no registry client configured")
                answer = self.rollback(model, to, reason)
                note = f"rolled back: champion v{degraded.version} -> v{to} (registry: {answer.get('reason', 'ok')})"
                outcome = "rollback"
            except DriftloopError as exc:
                note = f"rollback of v{degraded.version} to v{to} refused or failed: {exc}"
                outcome = "suppressed"
            log.warning("triggers: guard on %s: %s", model, note)
            self._decision_event(
                model, "guard", outcome, reason, note, event, version=degraded.version, numbers=numbers, session=session
            )
            # The retrain decision, by the policy, as for any degradation (about the version that served the
            # traffic: after a rollback, the previous champion again).
            retrain_alarm = Alarm(version=to if outcome == "rollback" else degraded.version, numbers=numbers)
            view = self._view(session, pipeline)
            if outcome == "rollback":
                view = ModelView(**{**view.__dict__, "champion_version": to})
            decision = decide("guard", pipeline.triggers, view, self.clock(), alarm=retrain_alarm)
            if decision.status == "requested":
                # The rolled-back version was trained on the latest data: the same data would give it again.
                note = "the rolled-back version was trained on the latest data: waiting for the next dataset version"
                decision = Decision("pending", note, "data")
            self._record(
                session,
                model,
                "guard",
                event,
                reason,
                decision,
                view.latest_dataset_version_id,
                alarm=retrain_alarm,
                change_started_at=window[0],
            )

    def request_manual(self, model: str, reason: str, dataset_version_id: str | None = None) -> dict[str, Any]:
        """A person asks for a retrain, on the latest materialized dataset version or on a pinned one
        (``STREAM@vN`` of the model's stream, materialized already). Raises NotFoundError (unknown model) or
        RetrainConflict (RunInProgress, code ``run_in_progress``, while a run is active or awaits the gate)."""
        pipeline = pipeline_for_model(self.pipelines, model)
        with self._lock, self.Session.begin() as session:
            view = self._view(session, pipeline)
            if view.latest_dataset_version_id is None:
                raise RetrainConflict(
                    f"no dataset version of stream {pipeline.stream.name!r} is materialized yet: nothing to train on"
                )
            if dataset_version_id is not None:
                try:
                    stream, number = parse_dataset_version_id(dataset_version_id)
                except ValueError as exc:
                    raise RetrainConflict(str(exc)) from None
                if stream != pipeline.stream.name:
                    raise RetrainConflict(
                        f"{dataset_version_id} is not a version of {model!r}'s stream {pipeline.stream.name!r}"
                    )
                if number > _version_number(view.latest_dataset_version_id):
                    raise RetrainConflict(
                        f"{dataset_version_id} is not materialized yet (latest: {view.latest_dataset_version_id})"
                    )
            decision = decide("manual", pipeline.triggers, view, self.clock())
            pinned = dataset_version_id or view.latest_dataset_version_id
            note = f" on pinned {dataset_version_id}" if dataset_version_id else ""
            row = self._record(session, model, "manual", None, (reason or "manual retrain") + note, decision, pinned)
            result = _row_dict(row)
        if decision.status != "requested":
            refused = RunInProgress if view.active_runs or view.gating_runs else RetrainConflict
            raise refused(f"retrain of {model!r} not requested: {decision.note}")
        return result

    # --- decisions ---------------------------------------------------------------------------------------

    def _fire_pending(
        self, session: Session, pipeline: PipelineConfig, features: Event[FeaturesMaterialized]
    ) -> Decision | None:
        """Fire the model's pending request on fresh data; the decision for the features event, or None."""
        model = pipeline.model.name
        pending = session.scalar(
            sa.select(TrainingRequest)
            .where(TrainingRequest.model == model, TrainingRequest.status == "pending")
            .order_by(TrainingRequest.created_at)
            .limit(1)
        )
        if pending is None or pending.wait_for == "run":
            return None
        cause_time = as_utc(pending.cause_occurred_at)
        if cause_time is not None and features.envelope.occurred_at < cause_time:
            # Data cut before the cause: not post-drift. Wait for the next version.
            return Decision("suppressed", f"data older than pending request {pending.request_id}'s cause")
        view = self._view(session, pipeline)
        decision = fire_pending(view)
        if decision.status != "requested":
            return Decision("suppressed", f"merged into pending request {pending.request_id} ({decision.note})")
        why = f"{decision.note} (event {features.id})"
        self._fire(session, pending, features.payload.dataset_version_id, why, features)
        return Decision("suppressed", f"merged into request {pending.request_id} ({pending.trigger}), fired by this")

    def _pending_rows(self, session: Session, model: str) -> list[TrainingRequest]:
        return list(
            session.scalars(
                sa.select(TrainingRequest)
                .where(TrainingRequest.model == model, TrainingRequest.status == "pending")
                .order_by(TrainingRequest.created_at)
            ).all()
        )

    def _fire_queued(self, session: Session, pipeline: PipelineConfig, ended: Event[Payload]) -> None:
        """No run is active or awaits the gate any more: fire the request queued behind it (once, if still valid;
        in cooldown it keeps waiting for the cooldown)."""
        view = self._view(session, pipeline)
        if view.active_runs or view.gating_runs:
            return
        for queued in self._pending_rows(session, pipeline.model.name):
            if queued.wait_for != "run":
                continue
            if view.latest_dataset_version_id is None:
                queued.wait_for = "data"
                continue
            cooling = cooldown_left(pipeline.triggers, view, self.clock())
            if cooling is not None and queued.trigger != "manual":
                queued.wait_for = "cooldown"
                queued.note = f"{queued.note}; the run ended, {cooling}"
                continue
            self._fire(session, queued, view.latest_dataset_version_id, f"{ended.type} {ended.id}", ended)
            return

    def _fire_cooled_down(self, session: Session, pipeline: PipelineConfig, clock_event: Event[Payload] | None) -> None:
        """Fire the model's request pending on the cooldown once the cooldown is over (wall time: the schedule
        tick; rows: new rows landed; event time: newer events)."""
        pending = [r for r in self._pending_rows(session, pipeline.model.name) if r.wait_for == "cooldown"]
        if not pending:
            return
        view = self._view(session, pipeline)
        if view.active_runs or view.gating_runs:
            return
        cooling = cooldown_left(pipeline.triggers, view, self.clock())
        if cooling is not None or view.latest_dataset_version_id is None:
            return
        held = pending[0]
        if held.trigger == "drift" and waits_for_next_cut(pipeline.triggers, held.change_started_at is not None):
            stream = session.get(TriggerStreamState, pipeline.stream.name)
            cause_time = as_utc(held.cause_occurred_at)
            if stream is None or cause_time is None or as_utc(stream.materialized_at) < cause_time:
                # The cooldown is over, but the drift still wants data cut after it (wait_for_fresh_data).
                held.wait_for = "data"
                held.note = f"{held.note}; cooldown over, waiting for the next dataset version (wait_for_fresh_data)"
                return
        why = f"cooldown over ({pipeline.triggers.cooldown_by})"
        self._fire(session, held, view.latest_dataset_version_id, why, clock_event)

    def _fire_followup(self, session: Session, pipeline: PipelineConfig, clock_event: Event[Payload]) -> None:
        """Request the next follow-up retrain of the model's last located change when it is due
        (``triggers.after_change``): in the change's cascade, on the rows at or after the same change."""
        model = pipeline.model.name
        state = session.get(TriggerModelState, model)
        plan = ChangePlan.from_json(state.change_plan if state is not None else None)
        if plan is None:
            return
        view = self._view(session, pipeline)
        reason = followup_due(pipeline.triggers, plan, view)
        if reason is None:
            return
        request_id = request_id_for(model, f"followup:{plan.request_id}:{plan.done + 1}")
        if session.get(TrainingRequest, request_id) is not None:
            return
        first = session.get(TrainingRequest, plan.request_id)
        cause = _cause_stub(first, clock_event) if first is not None else clock_event
        row = TrainingRequest(
            request_id=request_id,
            model=model,
            trigger="followup",
            reason=reason,
            cause_event_id=first.cause_event_id if first is not None else None,
            cascade_id=first.cascade_id if first is not None else None,
            cause_occurred_at=as_utc(first.cause_occurred_at) if first is not None else None,
            dataset_version_id=view.latest_dataset_version_id,
            status="requested",
            note=f"train on {view.latest_dataset_version_id} from {plan.change_started_at.isoformat()}",
            created_at=utcnow(),
            change_started_at=plan.change_started_at,
        )
        session.add(row)
        log.info("triggers: followup for %s: %s", model, reason)
        self._decision_event(
            model,
            "followup",
            "retrain",
            reason,
            row.note or "",
            cause,
            request_id=request_id,
            numbers={
                "followup": plan.done + 1,
                "rows_landed": view.rows_total - (plan.rows_at or 0),
                "brought_forward_by": plan.brought_forward_by,
            },
            session=session,
        )
        self._emit(session, row, cause)

    def _fire(
        self,
        session: Session,
        pending: TrainingRequest,
        dataset_version_id: str,
        why: str,
        fallback: Event[Payload] | None,
    ) -> None:
        """A pending request fires: requested on ``dataset_version_id``, in its cause's cascade."""
        pending.status = "requested"
        pending.wait_for = None
        pending.dataset_version_id = dataset_version_id
        pending.note = f"{pending.note}; fired: {why}"
        pending.updated_at = self.clock()
        cause = _cause_stub(pending, fallback)
        coalesced = int(
            session.scalar(sa.select(sa.func.count()).where(TrainingRequest.merged_into == pending.request_id)) or 0
        )
        self._decision_event(
            pending.model,
            pending.trigger,
            "retrain",
            pending.reason,
            f"fired: {why}; {coalesced} coalesced cause(s); train on {dataset_version_id}",
            cause,
            version=pending.version,
            request_id=pending.request_id,
            numbers={"coalesced": coalesced},
            session=session,
        )
        self._emit(session, pending, cause)

    def _close_pending(
        self, session: Session, pending: TrainingRequest, status: str, note: str, cause: Event[Payload]
    ) -> None:
        """A pending request ends without a run (stale): recorded, and on the timeline."""
        pending.status = status
        pending.wait_for = None
        pending.note = f"{pending.note}; {status}: {note}"
        pending.updated_at = self.clock()
        self._decision_event(
            pending.model,
            pending.trigger,
            DECISION_NAMES.get(status, status),
            pending.reason,
            note,
            _cause_stub(pending, cause),
            version=pending.version,
            request_id=pending.request_id,
            session=session,
        )

    def check_due(self) -> list[str]:
        """The schedule tick: forget completed runs whose gate decision never came (``GATE_TIMEOUT_SECONDS``) and
        fire requests whose cooldown (wall time) or run ended. The request ids fired."""
        fired: list[str] = []
        now = self.clock()
        for model, pipeline in self.pipelines.items():
            with self._lock, self.Session.begin() as session:
                state = session.get(TriggerModelState, model)
                if state is None:
                    continue
                gating = [g for g in state.gating_runs or [] if _gate_pending(g, now)]
                if len(gating) != len(state.gating_runs or []):
                    state.gating_runs = gating
                    session.flush()
                before = {r.request_id for r in self._pending_rows(session, model)}
                if not before:
                    continue
                self._fire_queued(session, pipeline, _tick_event(model))
                self._fire_cooled_down(session, pipeline, None)
                session.flush()
                fired += sorted(before - {r.request_id for r in self._pending_rows(session, model)})
        return fired

    def _record(
        self,
        session: Session,
        model: str,
        kind: TriggerKind,
        cause: Event[Payload] | None,
        reason: str,
        decision: Decision,
        dataset_version_id: str | None = None,
        request_id: str | None = None,
        *,
        alarm: Alarm | None = None,
        change_started_at: datetime | None = None,
        merged_into: str | None = None,
    ) -> TrainingRequest:
        if decision.status == "coalesced" and merged_into is None:
            pending = self._pending_rows(session, model)
            if pending:
                merged_into = pending[0].request_id
                pending[0].change_started_at = _earliest(as_utc(pending[0].change_started_at), change_started_at)
        row = TrainingRequest(
            request_id=request_id or (request_id_for(model, cause.id) if cause else str(uuid.uuid4())),
            model=model,
            trigger=kind,
            reason=reason,
            cause_event_id=cause.id if cause else None,
            cascade_id=cause.envelope.cascade_id if cause else None,
            cause_occurred_at=cause.envelope.occurred_at if cause else None,
            dataset_version_id=dataset_version_id if decision.status == "requested" else None,
            status=decision.status,
            note=decision.note,
            wait_for=decision.wait_for if decision.status == "pending" else None,
            created_at=utcnow(),
            version=alarm.version if alarm is not None else None,
            merged_into=merged_into,
            change_started_at=change_started_at,
        )
        session.add(row)
        log.info("triggers: %s for %s (%s): %s - %s", decision.status, model, kind, reason, decision.note)
        self._decision_event(
            model,
            kind,
            DECISION_NAMES[decision.status],
            reason,
            decision.note,
            cause,
            version=row.version,
            request_id=merged_into or (row.request_id if decision.status in ("requested", "pending") else None),
            numbers=alarm.numbers if alarm is not None else {},
            session=session,
        )
        if decision.status == "requested":
            self._emit(session, row, cause)
        return row

    def _decision_event(
        self,
        model: str,
        trigger: str,
        decision: str,
        reason: str,
        note: str,
        cause: Event[Payload] | Envelope | None,
        *,
        version: int | None = None,
        request_id: str | None = None,
        numbers: dict[str, Any] | None = None,
        session: Session | None = None,
    ) -> None:
        """The decision on the timeline (``RetrainDecision``), in the cause's cascade. Published inside the decision's
        transaction: a decision redone after a crash (its cause redelivered) makes the same event, same id."""
        state = session.get(TriggerModelState, model) if session is not None else None
        cause_id = (cause.id if isinstance(cause, Event) else cause.event_id) if cause is not None else None
        payload = RetrainDecision(
            model=model,
            trigger=trigger,
            decision=decision,
            reason=reason,
            note=note,
            version=version,
            champion_version=state.champion_version if state is not None else None,
            request_id=request_id,
            cause_event_id=cause_id,
            numbers_json=json.dumps(numbers or {}, default=str, sort_keys=True),
        )
        once_per = None if cause_id is None else f"{cause_id}|{trigger}|{decision}|{request_id}|{version}"
        self.publish(new_event(payload, producer=self.producer, cause=cause, once_per=once_per))

    def _emit(self, session: Session, row: TrainingRequest, cause: Event[Payload] | Envelope | None) -> None:
        # Published before the commit: a crash between the two redoes the decision (same request id) on the
        # redelivered cause, and the request goes out again with the same event id (training takes it once).
        event = new_event(training_requested(row), producer=self.producer, cause=cause, once_per=row.request_id)
        row.event_id = event.id
        model_state = self._model_state(session, row.model)
        if row.trigger != "manual":
            # The cooldown damps automatic causes; a person's request neither obeys nor restarts it (a drift
            # right after a manual retrain on older data must still be acted on).
            now = self.clock()
            model_state.last_request_at = now
            pipeline = self.pipelines.get(row.model)
            stream = session.get(TriggerStreamState, pipeline.stream.name) if pipeline else None
            model_state.last_request_rows_total = int(stream.rows_total or 0) if stream else 0
            model_state.last_request_event_time = stream.max_event_time if stream else None
            # A new dict, so that SQLAlchemy sees the JSON column change.
            model_state.last_request_by_kind = {
                **(model_state.last_request_by_kind or {}),
                row.trigger: now.isoformat(),
            }
            self._advance_change_plan(model_state, row)
        model_state.updated_at = utcnow()
        session.flush()
        # Inside the transaction: if publishing fails, the decision is rolled back and made again on retry.
        self.publish(event)

    def _start_change_clock(
        self, session: Session, model: str, rows_total: int, cut: Event[DatasetVersionCreated]
    ) -> None:
        """The first cut after a change's first request holds the rows it trains on: the follow-ups count the rows
        landed from there (the row clock moves only with cuts, so the request's own reading is stale). The plan
        keeps its newest cuts: where the data of each model it trains ends (``_note_plan_version``)."""
        state = session.get(TriggerModelState, model)
        plan = ChangePlan.from_json(state.change_plan if state is not None else None)
        if state is None or plan is None or not plan.active(self.pipelines[model].triggers):
            return
        if cut.envelope.occurred_at < plan.requested_at:
            return
        cuts = (*plan.cuts, (cut.payload.dataset_version_id, cut.envelope.occurred_at))[-PLAN_CUTS_KEPT:]
        state.change_plan = replace(
            plan, rows_at=rows_total if plan.rows_at is None else plan.rows_at, cuts=cuts
        ).to_json()

    def _advance_change_plan(self, state: TriggerModelState, row: TrainingRequest) -> None:
        """A request on a located change starts its follow-up plan (replacing an older change's); a follow-up
        counts as done (``triggers.after_change``)."""
        if row.trigger == "followup":
            plan = ChangePlan.from_json(state.change_plan)
            if plan is not None:
                # This follow-up answers the champion: a later alarm about it brings nothing forward again.
                answered = state.champion_version
                done = replace(plan, done=plan.done + 1, brought_forward_by=None, brought_forward_version=answered)
                state.change_plan = done.to_json()
            return
        pipeline = self.pipelines.get(row.model)
        started = as_utc(row.change_started_at)
        if started is None or pipeline is None or not pipeline.triggers.after_change.followup_rows:
            return
        plan = ChangePlan.from_json(state.change_plan)
        if plan is not None and continues_completed_plan(pipeline.triggers, plan, row.version, started):
            state.change_plan = replace(plan, cascade_id=row.cascade_id).to_json()  # its model joins the plan
            return
        replaces = row.version if row.version is not None else state.champion_version
        state.change_plan = ChangePlan(
            row.request_id, started, self.clock(), cascade_id=row.cascade_id, replaces=replaces
        ).to_json()

    # --- state -------------------------------------------------------------------------------------------

    def _record_dataset(self, session: Session, event: Event[FeaturesMaterialized]) -> None:
        stream, dataset_version_id = event.payload.stream, event.payload.dataset_version_id
        row = session.get(TriggerStreamState, stream)
        if row is not None and _version_number(row.dataset_version_id) > _version_number(dataset_version_id):
            return  # an older version arriving late does not replace the latest
        if row is None:
            row = TriggerStreamState(stream=stream)
            session.add(row)
        row.dataset_version_id = dataset_version_id
        row.event_id = event.id
        row.materialized_at = event.envelope.occurred_at
        row.updated_at = utcnow()

    def _model_state(self, session: Session, model: str) -> TriggerModelState:
        row = session.get(TriggerModelState, model)
        if row is None:
            row = TriggerModelState(
                model=model, champion_version=None, active_runs=[], last_request_at=None, last_request_by_kind={}
            )
            session.add(row)
            session.flush()
        return row

    def _view(self, session: Session, pipeline: PipelineConfig, kind: TriggerKind | None = None) -> ModelView:
        """The model as the policy sees it. The cooldown counts from the model's last automatic request, whatever
        its kind (a cause arriving meanwhile is coalesced and fires when the cooldown ends, never lost); ``kind``
        is accepted for callers and unused."""
        model = pipeline.model.name
        state = session.get(TriggerModelState, model)
        stream = session.get(TriggerStreamState, pipeline.stream.name)
        pending = session.scalar(
            sa.select(TrainingRequest.request_id)
            .where(TrainingRequest.model == model, TrainingRequest.status == "pending")
            .order_by(TrainingRequest.created_at)
            .limit(1)
        )
        return ModelView(
            has_champion=state is not None and state.champion_version is not None,
            active_runs=tuple(state.active_runs) if state else (),
            last_request_at=as_utc(state.last_request_at) if state else None,
            pending_request_id=pending,
            # Empty: rows were counted (DatasetVersionCreated) before the first version was materialized.
            latest_dataset_version_id=(stream.dataset_version_id or None) if stream else None,
            champion_version=state.champion_version if state else None,
            gating_runs=tuple(g[0] for g in (state.gating_runs or [])) if state else (),
            rows_total=int(stream.rows_total or 0) if stream else 0,
            last_request_rows_total=state.last_request_rows_total if state else None,
            event_time=as_utc(stream.max_event_time) if stream else None,
            last_request_event_time=as_utc(state.last_request_event_time) if state else None,
        )

    def _has_unconfirmed_drift(self, session: Session, model: str, version: int) -> bool:
        """A drift of ``version`` was reported without retraining (the policy waited for a confirmation)."""
        found = session.scalar(
            sa.select(TrainingRequest.request_id)
            .where(
                TrainingRequest.model == model,
                TrainingRequest.trigger == "drift",
                TrainingRequest.version == version,
                TrainingRequest.status == "suppressed",
                TrainingRequest.note.like(f"{UNCONFIRMED}%"),
            )
            .limit(1)
        )
        return found is not None

    def _already_decided(self, session: Session, model: str, cause_event_id: str) -> bool:
        """One cause event gives at most one decision per model (the bus also skips redeliveries)."""
        found = session.scalar(
            sa.select(TrainingRequest.request_id).where(
                TrainingRequest.model == model, TrainingRequest.cause_event_id == cause_event_id
            )
        )
        if found is not None:
            log.info("triggers: cause %s for %s already decided (request %s)", cause_event_id, model, found)
        return found is not None

    # --- queries (API) -----------------------------------------------------------------------------------

    def requests(self, model: str, limit: int) -> list[dict[str, Any]]:
        pipeline_for_model(self.pipelines, model)
        with self.Session() as session:
            rows = session.scalars(
                sa.select(TrainingRequest)
                .where(TrainingRequest.model == model)
                .order_by(TrainingRequest.created_at.desc())
                .limit(limit)
            ).all()
        return [_row_dict(r) for r in rows]

    def model_state(self, model: str) -> dict[str, Any]:
        pipeline = pipeline_for_model(self.pipelines, model)
        with self.Session() as session:
            view = self._view(session, pipeline)
            state = session.get(TriggerModelState, model)
            stream = session.get(TriggerStreamState, pipeline.stream.name)
        return {
            "model": model,
            "stream": pipeline.stream.name,
            "champion_version": state.champion_version if state else None,
            "active_runs": list(view.active_runs),
            "last_request_at": view.last_request_at.isoformat() if view.last_request_at else None,
            "pending_request_id": view.pending_request_id,
            "latest_dataset_version_id": view.latest_dataset_version_id,
            "rows_since_request": int(stream.rows_since_request or 0) if stream else 0,
            "labels_since_request": int(state.labels_since_request or 0) if state else 0,
            "last_schedule_slot": as_utc(state.last_schedule_slot).isoformat()
            if state and state.last_schedule_slot
            else None,
            "policy": pipeline.triggers.model_dump(),
        }


def training_requested(row: TrainingRequest) -> TrainingRequested:
    """The ``TrainingRequested`` of a requested row (sent at the decision, and again by the outbox)."""
    return TrainingRequested(
        request_id=row.request_id,
        model=row.model,
        trigger=row.trigger,
        reason=row.reason,
        dataset_version_id=row.dataset_version_id,
        change_started_at=as_utc(row.change_started_at),
    )


def _version_number(dataset_version_id: str) -> int:
    try:
        return parse_dataset_version_id(dataset_version_id)[1]
    except ValueError:
        return -1


CAUSE_EVENT_TYPES: dict[str, type[Payload]] = {
    "drift": DriftDetected,
    "external": ExternalTrigger,
    "performance": PerformanceDegraded,
    "guard": PerformanceDegraded,
    "labels": FeedbackReceived,
    "new_data": FeaturesMaterialized,
}


def _numbers(**values: Any) -> dict[str, Any]:
    """The numbers of a decision, without the unknown ones."""
    return {k: v for k, v in values.items() if v is not None}


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return min((t for t in (a, b) if t is not None), default=None)


def _advance_event_time(stream: TriggerStreamState, when: datetime | None) -> None:
    """The stream's event-time clock only moves forward."""
    when = as_utc(when)
    current = as_utc(stream.max_event_time)
    if when is not None and (current is None or when > current):
        stream.max_event_time = when


def _gate_decided(state: TriggerModelState, event: Event[Any]) -> None:
    """Note when the gate decided (the newest decision's time, whatever order the events are read in)."""
    decided = as_utc(state.gate_decided_at)
    if decided is None or event.envelope.occurred_at > decided:
        state.gate_decided_at = event.envelope.occurred_at


def _reopen_plan_for_kept_champion(state: TriggerModelState, pipeline: PipelineConfig | None) -> None:
    """The gate kept the champion a follow-up of the active change plan answered (its model was rejected): the
    champion serves on, so its next degradation brings the plan's next follow-up forward again, instead of waiting
    for the planned rows while a model that lost the change answers."""
    plan = ChangePlan.from_json(state.change_plan)
    if (
        plan is not None
        and pipeline is not None
        and plan.active(pipeline.triggers)
        and plan.brought_forward_by is None
        and plan.brought_forward_version is not None
        and plan.brought_forward_version == state.champion_version
    ):
        state.change_plan = replace(plan, brought_forward_version=None).to_json()


def _note_plan_version(
    state: TriggerModelState, promoted: Event[ModelPromoted], pipeline: PipelineConfig | None
) -> None:
    """A champion promoted in the change plan's cascade was trained inside the plan (an alarm about it folds into
    the plan; a rollback's promotion is not a training's). Its data ends at the cut it trained on. Weak already at
    its gate (``weak_at_gate``): the plan's next follow-up is brought forward, on the rows it never saw."""
    plan = ChangePlan.from_json(state.change_plan)
    payload = promoted.payload
    if plan is None or payload.rollback or plan.cascade_id is None or promoted.envelope.cascade_id != plan.cascade_id:
        return
    version = payload.version
    data_cut_at = dict(plan.cuts).get(payload.dataset_version_id or "", plan.data_cut_at)
    plan = replace(plan, versions=tuple(sorted({*plan.versions, version})), data_cut_at=data_cut_at)
    if pipeline is not None and plan.active(pipeline.triggers) and plan.brought_forward_version != version:
        performance = pipeline.monitor.performance
        metric = performance.metric or ("roc_auc" if pipeline.model.task == "classification" else "rmse")
        gate = json.loads(payload.gate_json or "{}")
        score = gate.get("challenger_score") if metric == pipeline.gate.metric else None
        weak = weak_at_gate(metric, score, performance.threshold)
        if weak is not None:
            log.info("triggers: v%d of %s, trained inside the change plan, is weak at %s", version, payload.model, weak)
            plan = replace(plan, brought_forward_by=f"v{version}'s {weak}", brought_forward_version=version)
            plan = replace(plan, change_started_at=brought_forward_start(plan, data_cut_at))
    state.change_plan = plan.to_json()


def _gate_pending(entry: list[str], now: datetime) -> bool:
    """A completed run still awaits its gate decision (until ``GATE_TIMEOUT_SECONDS``)."""
    started = as_utc(datetime.fromisoformat(entry[1]))
    return started is not None and now - started < timedelta(seconds=GATE_TIMEOUT_SECONDS)


def _tick_event(model: str) -> Event[Payload]:
    """What a request fired by the schedule tick names as its trigger (never published)."""
    return new_event(ExternalTrigger(model=model, reason="schedule tick"), producer="triggers")


def _cause_stub(pending: TrainingRequest, fallback: Event[Payload] | None) -> Event[Payload] | Envelope | None:
    """The stored cause of a pending request (the envelope of its cause: id and cascade), enough for ``new_event``
    to continue that cascade; a pending request without a cause event (none today) is caused by the fresh data."""
    if pending.cause_event_id is None:
        return fallback
    return Envelope(
        event_id=pending.cause_event_id,
        event_type=CAUSE_EVENT_TYPES.get(pending.trigger, DriftDetected).event_type,
        occurred_at=as_utc(pending.cause_occurred_at) or as_utc(pending.created_at) or utcnow(),
        caused_by=None,
        cascade_id=pending.cascade_id or pending.cause_event_id,
        producer="",
    )


def _row_dict(row: TrainingRequest) -> dict[str, Any]:
    return {
        "request_id": row.request_id,
        "model": row.model,
        "trigger": row.trigger,
        "reason": row.reason,
        "status": row.status,
        "note": row.note,
        "cause_event_id": row.cause_event_id,
        "cascade_id": row.cascade_id,
        "dataset_version_id": row.dataset_version_id,
        "event_id": row.event_id,
        "wait_for": row.wait_for,
        "version": row.version,
        "merged_into": row.merged_into,
        "change_started_at": as_utc(row.change_started_at).isoformat() if row.change_started_at else None,
        "created_at": as_utc(row.created_at).isoformat() if row.created_at else None,
        "updated_at": as_utc(row.updated_at).isoformat() if row.updated_at else None,
    }
