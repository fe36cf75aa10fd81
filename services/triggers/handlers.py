"""The triggers service's handlers: keep per-stream and per-model state, decide by policy, emit requests.

Every decision (requested, pending, suppressed) is a ``TrainingRequest`` row. A decision and its
``TrainingRequested`` event go together: the event is published inside the database transaction, so a failed
publish rolls the decision back and the cause is handled again later; the request id is derived from the model
and the cause event id, so a repeat after a crash between publish and commit carries the same idempotency key.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from driftloop.db.models import TrainingRequest, TriggerModelState, TriggerStreamState, utcnow
from driftloop.errors import DriftloopError
from driftloop.events import Envelope, Event, new_event
from driftloop.layout import parse_dataset_version_id
from driftloop.pipeline import PipelineConfig, pipeline_for_model

from .policy import Decision, ModelView, TriggerKind, decide, fire_pending

log = logging.getLogger(__name__)

ACTIVE_RUN_STATES = frozenset({"pending", "running"})
FINISHED_RUN_STATES = frozenset({"completed", "failed", "aborted"})
CHAMPION_ALIAS = "champion"
# Namespace of request ids derived from (model, cause event id).
REQUEST_NAMESPACE = uuid.UUID("5b0c56f4-5d0e-4d8c-9a4c-0c7d1f6b2a11")


class RetrainConflict(DriftloopError):
    """A manual retrain cannot be requested now (no data yet, or a run is active)."""


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
        publish: Callable[[Event], None],
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

    def on_model_promoted(self, event: Event) -> None:
        if event["alias"] != CHAMPION_ALIAS:
            return
        with self._lock, self.Session.begin() as session:
            self._model_state(session, event["model"]).champion_version = event["version"]

    def on_model_rejected(self, event: Event) -> None:
        # The gate kept the champion: if the event names one, the model has a champion.
        if event.data.get("champion_version") is None:
            return
        with self._lock, self.Session.begin() as session:
            self._model_state(session, event["model"]).champion_version = event["champion_version"]

    def on_run_state_changed(self, event: Event) -> None:
        run_id, state = event["run_id"], event["state"]
        with self._lock, self.Session.begin() as session:
            model_state = self._model_state(session, event["model"])
            runs = [r for r in model_state.active_runs if r != run_id]
            if state in ACTIVE_RUN_STATES:
                runs.append(run_id)
            elif state not in FINISHED_RUN_STATES:
                log.warning("triggers: run %s of %s in unknown state %r", run_id, event["model"], state)
                return
            model_state.active_runs = runs
            model_state.updated_at = utcnow()

    # --- causes ------------------------------------------------------------------------------------------

    def on_features_materialized(self, event: Event) -> None:
        stream, dataset_version_id = event["stream"], event["dataset_version_id"]
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
            reason = f"new dataset version {dataset_version_id} ({event['row_count']} rows)"
            self._record(session, model, "new_data", event, reason, decision, view.latest_dataset_version_id)

    def on_drift_detected(self, event: Event) -> None:
        features = ", ".join(event["drifted_features"]) or "none"
        reason = f"drift of v{event['version']} in window {event['window_index']}: {features}"
        self._on_cause("drift", event, reason)

    def on_external_trigger(self, event: Event) -> None:
        self._on_cause("external", event, event["reason"] or "external trigger")

    def _on_cause(self, kind: TriggerKind, event: Event, reason: str) -> None:
        model = event["model"]
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
            decision = decide(kind, pipeline.triggers, view, self.clock())
            self._record(session, model, kind, event, reason, decision, view.latest_dataset_version_id)

    def request_manual(self, model: str, reason: str) -> dict[str, Any]:
        """A person asks for a retrain. Raises NotFoundError (unknown model) or RetrainConflict."""
        pipeline = pipeline_for_model(self.pipelines, model)
        with self._lock, self.Session.begin() as session:
            view = self._view(session, pipeline)
            if view.latest_dataset_version_id is None:
                raise RetrainConflict(
                    f"no dataset version of stream {pipeline.stream.name!r} is materialized yet: nothing to train on"
                )
            decision = decide("manual", pipeline.triggers, view, self.clock())
            row = self._record(
                session, model, "manual", None, reason or "manual retrain", decision, view.latest_dataset_version_id
            )
            result = _row_dict(row)
        if decision.status != "requested":
            raise RetrainConflict(f"retrain of {model!r} not requested: {decision.note}")
        return result

    # --- decisions ---------------------------------------------------------------------------------------

    def _fire_pending(self, session: Session, pipeline: PipelineConfig, features: Event) -> Decision | None:
        """Fire the model's pending request on fresh data; the decision for the features event, or None."""
        model = pipeline.model.name
        pending = session.scalar(
            sa.select(TrainingRequest)
            .where(TrainingRequest.model == model, TrainingRequest.status == "pending")
            .order_by(TrainingRequest.created_at)
            .limit(1)
        )
        if pending is None:
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
        pending.dataset_version_id = features["dataset_version_id"]
        pending.note = f"{pending.note}; fired: {decision.note} (event {features.id})"
        pending.updated_at = self.clock()
        cause = _cause_stub(pending, features)
        self._emit(session, pending, cause)
        return Decision("suppressed", f"merged into request {pending.request_id} ({pending.trigger}), fired by this")

    def _record(
        self,
        session: Session,
        model: str,
        kind: TriggerKind,
        cause: Event | None,
        reason: str,
        decision: Decision,
        dataset_version_id: str | None = None,
    ) -> TrainingRequest:
        row = TrainingRequest(
            request_id=request_id_for(model, cause.id) if cause else str(uuid.uuid4()),
            model=model,
            trigger=kind,
            reason=reason,
            cause_event_id=cause.id if cause else None,
            cascade_id=cause.envelope.cascade_id if cause else None,
            cause_occurred_at=cause.envelope.occurred_at if cause else None,
            dataset_version_id=dataset_version_id if decision.status == "requested" else None,
            status=decision.status,
            note=decision.note,
            created_at=utcnow(),
        )
        session.add(row)
        log.info("triggers: %s for %s (%s): %s - %s", decision.status, model, kind, reason, decision.note)
        if decision.status == "requested":
            self._emit(session, row, cause)
        return row

    def _emit(self, session: Session, row: TrainingRequest, cause: Event | None) -> None:
        data = {
            "request_id": row.request_id,
            "model": row.model,
            "trigger": row.trigger,
            "reason": row.reason,
            "dataset_version_id": row.dataset_version_id,
        }
        event = new_event("TrainingRequested", data, producer=self.producer, cause=cause)
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

    def _record_dataset(self, session: Session, event: Event) -> None:
        stream, dataset_version_id = event["stream"], event["dataset_version_id"]
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
            latest_dataset_version_id=stream.dataset_version_id if stream else None,
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
        return {
            "model": model,
            "stream": pipeline.stream.name,
            "champion_version": state.champion_version if state else None,
            "active_runs": list(view.active_runs),
            "last_request_at": view.last_request_at.isoformat() if view.last_request_at else None,
            "pending_request_id": view.pending_request_id,
            "latest_dataset_version_id": view.latest_dataset_version_id,
            "policy": pipeline.triggers.model_dump(),
        }


def _version_number(dataset_version_id: str) -> int:
    try:
        return parse_dataset_version_id(dataset_version_id)[1]
    except ValueError:
        return -1


CAUSE_EVENT_TYPES = {"drift": "DriftDetected", "external": "ExternalTrigger"}


def _cause_stub(pending: TrainingRequest, fallback: Event) -> Event:
    """The stored cause of a pending request (its id and cascade), enough for ``new_event`` to continue that
    cascade; a pending request without a cause event (none today) is caused by the fresh data."""
    if pending.cause_event_id is None:
        return fallback
    envelope = Envelope(
        event_id=pending.cause_event_id,
        event_type=CAUSE_EVENT_TYPES.get(pending.trigger, "DriftDetected"),
        occurred_at=as_utc(pending.cause_occurred_at) or as_utc(pending.created_at) or utcnow(),
        caused_by=None,
        cascade_id=pending.cascade_id or pending.cause_event_id,
        producer="",
    )
    return Event(envelope=envelope)


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
        "created_at": as_utc(row.created_at).isoformat() if row.created_at else None,
        "updated_at": as_utc(row.updated_at).isoformat() if row.updated_at else None,
    }
