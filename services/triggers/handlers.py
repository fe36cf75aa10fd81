"""The triggers service's handlers: keep per-stream and per-model state, decide by policy, emit requests.

Every decision (requested, pending, suppressed) is a ``TrainingRequest`` row. A decision and its
``TrainingRequested`` event go together: the event is published inside the database transaction, so a failed
publish rolls the decision back and the cause is handled again later; the request id is derived from the model
and the cause event id, so a repeat after a crash between publish and commit carries the same idempotency key.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, overload

import sqlalchemy as sa
from croniter import croniter
from sqlalchemy.orm import Session, sessionmaker

from driftloop.clients.db.models import TrainingRequest, TriggerModelState, TriggerStreamState, utcnow
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
    RunStateChanged,
    TrainingRequested,
)
from driftloop.contracts.pipeline import PipelineConfig, pipeline_for_model
from driftloop.errors import ConflictError

from .policy import Decision, ModelView, TriggerKind, decide, fire_pending

log = logging.getLogger(__name__)

ACTIVE_RUN_STATES = frozenset({"pending", "running"})
FINISHED_RUN_STATES = frozenset({"completed", "failed", "aborted", "skipped"})
CHAMPION_ALIAS = "champion"
# Namespace of request ids derived from (model, cause event id).
REQUEST_NAMESPACE = uuid.UUID("5b0c56f4-5d0e-4d8c-9a4c-0c7d1f6b2a11")
# How often the schedule loop looks at the cron expressions (a slot fires within this many seconds).
SCHEDULE_TICK_SECONDS = 5.0


class RetrainConflict(ConflictError):
    """A manual retrain cannot be requested now (no data yet, or a run is active)."""

    default_code = "retrain_conflict"


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
        pipelines: dict[str, PipelineConfig],
        Session: sessionmaker[Session],
        publish: Callable[[Event[Payload]], None],
        producer: str = "triggers",
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.pipelines = pipelines
        self.Session = Session
        self.publish = publish
        self.producer = producer
        self.clock = clock
        # Decisions read and write per-model state: one at a time (consumer thread and HTTP threads).
        self._lock = threading.Lock()

    # --- state events ------------------------------------------------------------------------------------

    def on_model_promoted(self, event: Event[ModelPromoted]) -> None:
        promoted = event.payload
        if promoted.alias != CHAMPION_ALIAS:
            return
        with self._lock, self.Session.begin() as session:
            self._model_state(session, promoted.model).champion_version = promoted.version

    def on_model_rejected(self, event: Event[ModelRejected]) -> None:
        # The gate kept the champion: if the event names one, the model has a champion.
        rejected = event.payload
        if rejected.champion_version is None:
            return
        with self._lock, self.Session.begin() as session:
            self._model_state(session, rejected.model).champion_version = rejected.champion_version

    def on_run_state_changed(self, event: Event[RunStateChanged]) -> None:
        changed = event.payload
        model, run_id, state = changed.model, changed.run_id, changed.state
        with self._lock, self.Session.begin() as session:
            model_state = self._model_state(session, model)
            runs = [r for r in model_state.active_runs if r != run_id]
            if state in ACTIVE_RUN_STATES:
                runs.append(run_id)
            elif state not in FINISHED_RUN_STATES:
                log.warning("triggers: run %s of %s in unknown state %r", run_id, model, state)
                return
            model_state.active_runs = runs
            model_state.updated_at = utcnow()
            if not runs and model in self.pipelines:
                session.flush()
                self._fire_queued(session, self.pipelines[model], event)

    def on_dataset_version_created(self, event: Event[DatasetVersionCreated]) -> None:
        """Count new rows per stream, for ``triggers.new_data.every_n_rows``."""
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
                )
                session.add(row)
            row.rows_since_request = int(row.rows_since_request or 0) + created.new_rows
            row.updated_at = utcnow()

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
        self._on_cause("drift", event, reason, prediction_only=prediction and not features)

    def on_external_trigger(self, event: Event[ExternalTrigger]) -> None:
        self._on_cause("external", event, event.payload.reason or "external trigger")

    def on_performance_degraded(self, event: Event[PerformanceDegraded]) -> None:
        degraded = event.payload
        reason = (
            f"performance of v{degraded.version}: {degraded.metric} {degraded.value:.4g} past the threshold "
            f"{degraded.threshold:.4g} over {degraded.window_size} labeled predictions"
        )
        self._on_cause("performance", event, reason)

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
            except Exception:  # a database hiccup must not end the loop
                log.exception("triggers: schedule check failed")

    def _on_cause(
        self,
        kind: TriggerKind,
        event: Event[DriftDetected] | Event[ExternalTrigger] | Event[PerformanceDegraded],
        reason: str,
        *,
        prediction_only: bool = False,
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
            view = self._view(session, pipeline, kind)
            decision = decide(kind, pipeline.triggers, view, self.clock(), prediction_only=prediction_only)
            self._record(session, model, kind, event, reason, decision, view.latest_dataset_version_id)

    def request_manual(self, model: str, reason: str, dataset_version_id: str | None = None) -> dict[str, Any]:
        """A person asks for a retrain, on the latest materialized dataset version or on a pinned one
        (``STREAM@vN`` of the model's stream, materialized already). Raises NotFoundError (unknown model) or
        RetrainConflict."""
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
            raise RetrainConflict(f"retrain of {model!r} not requested: {decision.note}")
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
        pending.status = "requested"
        pending.dataset_version_id = features.payload.dataset_version_id
        pending.note = f"{pending.note}; fired: {decision.note} (event {features.id})"
        pending.updated_at = self.clock()
        cause = _cause_stub(pending, features)
        self._emit(session, pending, cause)
        return Decision("suppressed", f"merged into request {pending.request_id} ({pending.trigger}), fired by this")

    def _fire_queued(self, session: Session, pipeline: PipelineConfig, finished: Event[RunStateChanged]) -> None:
        """The model's last active run ended: fire the request queued behind it (``queue_while_running``)."""
        model = pipeline.model.name
        queued = session.scalar(
            sa.select(TrainingRequest)
            .where(
                TrainingRequest.model == model, TrainingRequest.status == "pending", TrainingRequest.wait_for == "run"
            )
            .order_by(TrainingRequest.created_at)
            .limit(1)
        )
        if queued is None:
            return
        view = self._view(session, pipeline)
        if view.latest_dataset_version_id is None:
            queued.wait_for = "data"
            return
        queued.status = "requested"
        queued.wait_for = None
        queued.dataset_version_id = view.latest_dataset_version_id
        run = finished.payload
        queued.note = f"{queued.note}; fired: run {run.run_id} ended {run.state} (event {finished.id})"
        queued.updated_at = self.clock()
        self._emit(session, queued, _cause_stub(queued, finished))

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
    ) -> TrainingRequest:
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
        )
        session.add(row)
        log.info("triggers: %s for %s (%s): %s - %s", decision.status, model, kind, reason, decision.note)
        if decision.status == "requested":
            self._emit(session, row, cause)
        return row

    def _emit(self, session: Session, row: TrainingRequest, cause: Event[Payload] | Envelope | None) -> None:
        requested = TrainingRequested(
            request_id=row.request_id,
            model=row.model,
            trigger=row.trigger,
            reason=row.reason,
            dataset_version_id=row.dataset_version_id,
        )
        event = new_event(requested, producer=self.producer, cause=cause)
        row.event_id = event.id
        model_state = self._model_state(session, row.model)
        if row.trigger != "manual":
            # The cooldown damps automatic causes; a person's request neither obeys nor restarts it (a drift
            # right after a manual retrain on older data must still be acted on).
            now = self.clock()
            model_state.last_request_at = now
            # A new dict, so that SQLAlchemy sees the JSON column change.
            model_state.last_request_by_kind = {
                **(model_state.last_request_by_kind or {}),
                row.trigger: now.isoformat(),
            }
        model_state.updated_at = utcnow()
        session.flush()
        # Inside the transaction: if publishing fails, the decision is rolled back and made again on retry.
        self.publish(event)

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
        """The model as the policy sees it. The cooldown counts from the last request of the same ``kind``:
        a drift right after the bootstrap (new-data) request is a new cause, not a repeat."""
        model = pipeline.model.name
        state = session.get(TriggerModelState, model)
        last_of_kind = None
        if kind is not None and state is not None and (state.last_request_by_kind or {}).get(kind):
            last_of_kind = datetime.fromisoformat(state.last_request_by_kind[kind])
        stream = session.get(TriggerStreamState, pipeline.stream.name)
        pending = session.scalar(
            sa.select(TrainingRequest.request_id)
            .where(TrainingRequest.model == model, TrainingRequest.status == "pending")
            .limit(1)
        )
        return ModelView(
            has_champion=state is not None and state.champion_version is not None,
            active_runs=tuple(state.active_runs) if state else (),
            last_request_at=as_utc(last_of_kind) if kind is not None else None,
            pending_request_id=pending,
            # Empty: rows were counted (DatasetVersionCreated) before the first version was materialized.
            latest_dataset_version_id=(stream.dataset_version_id or None) if stream else None,
        )

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


def _version_number(dataset_version_id: str) -> int:
    try:
        return parse_dataset_version_id(dataset_version_id)[1]
    except ValueError:
        return -1


CAUSE_EVENT_TYPES: dict[str, type[Payload]] = {
    "drift": DriftDetected,
    "external": ExternalTrigger,
    "performance": PerformanceDegraded,
    "labels": FeedbackReceived,
    "new_data": FeaturesMaterialized,
}


def _cause_stub(pending: TrainingRequest, fallback: Event[Payload]) -> Event[Payload] | Envelope:
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
        "created_at": as_utc(row.created_at).isoformat() if row.created_at else None,
        "updated_at": as_utc(row.updated_at).isoformat() if row.updated_at else None,
    }
