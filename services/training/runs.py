"""Run records and their state machine: every change is written to ``runs`` and announced as RunStateChanged."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from driftloop.clients.db.models import ModelVersion, Run
from driftloop.contracts.events import Envelope, Event, new_event
from driftloop.contracts.payloads import RunStateChanged, TrainingRequested
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.contracts.settings import Settings
from driftloop.errors import NotFoundError
from driftloop.runtime.service import Runtime

log = logging.getLogger(__name__)

SERVICE = "training"
PENDING, RUNNING, COMPLETED, FAILED, ABORTED = "pending", "running", "completed", "failed", "aborted"
PROMOTED = "promoted"  # a model version's status in the registry's table once the gate (or a person) promoted it
# Dropped before training: the model already has a run on exactly this data and configuration (see ``fingerprint``).
SKIPPED = "skipped"
ACTIVE_STATES = (PENDING, RUNNING)
# running -> pending: a run interrupted by a crash of the service, executed again at its next start.
ALLOWED = {PENDING: {RUNNING, FAILED, ABORTED, SKIPPED}, RUNNING: {COMPLETED, FAILED, ABORTED, PENDING}}
FINAL_STATES = (COMPLETED, FAILED, ABORTED, SKIPPED)
# A run interrupted this many times is failed instead of executed again.
MAX_ATTEMPTS = 2


def abort_flag(settings: Settings, run_id: str) -> Path:
    """The file whose existence aborts a run: the HTTP thread writes it, the search's Stopper and the fit's
    wait loop (in this process, the Ray driver) read it."""
    return settings.home / "run-aborts" / run_id


def request_abort(settings: Settings, run_id: str) -> None:
    flag = abort_flag(settings, run_id)
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.write_text(datetime.now(tz=UTC).isoformat())


def training_fingerprint(
    pipeline: PipelineConfig, dataset_version_id: str, since: datetime | None, labels_digest: str | None
) -> str:
    """What a run learns from, as one hash: the dataset version, the model, feature and label configuration, the
    change window and the feedback labels. Two runs with one fingerprint train the same model."""
    what = {
        "dataset_version_id": dataset_version_id,
        "model": pipeline.model.model_dump(mode="json", exclude={"change_wait_seconds"}),
        "features": [f.model_dump(mode="json") for f in pipeline.features],
        "label": pipeline.label_column,
        "since": since.isoformat() if since else None,
        "labels": labels_digest,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def request_record(request: Event[TrainingRequested]) -> dict[str, Any]:
    """The request as stored on its run (JSON): enough to execute the run again after a crash."""
    payload = request.payload.to_avro()
    at = payload.get("change_started_at")
    return {**payload, "change_started_at": at.isoformat() if isinstance(at, datetime) else at}


def request_of(run: Run) -> Event[TrainingRequested]:
    """The run's request, rebuilt from the run row: its payload, under a stand-in envelope with the original event
    id and cascade (the event itself may be gone), so that what follows keeps the lineage of the change."""
    stored = dict(run.request or {})
    at = stored.get("change_started_at")
    payload = TrainingRequested(
        request_id=run.request_id,
        model=run.model,
        trigger=stored.get("trigger", run.trigger),
        reason=stored.get("reason", ""),
        dataset_version_id=stored.get("dataset_version_id", run.dataset_version_id),
        rerun_of=stored.get("rerun_of", run.rerun_of),
        change_started_at=datetime.fromisoformat(at) if isinstance(at, str) else None,
        pinned=stored.get("pinned"),
    )
    envelope = Envelope(
        event_id=run.cause_event_id or run.run_id,
        event_type=TrainingRequested.event_type,
        occurred_at=run.created_at,
        caused_by=None,
        cascade_id=run.cascade_id or run.run_id,
        producer=SERVICE,
    )
    return Event(envelope=envelope, payload=payload)


def run_as_dict(run: Run) -> dict[str, Any]:
    return {column.key: getattr(run, column.key) for column in sa.inspect(Run).columns}


class RunTracker:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def create(self, request: Event[TrainingRequested]) -> Run | None:
        """A pending run for the request, or None if the request already has one (a redelivery)."""
        asked = request.payload
        run = Run(
            run_id=f"run-{uuid.uuid4().hex[:16]}",
            request_id=asked.request_id,
            model=asked.model,
            state=PENDING,
            trigger=asked.trigger,
            cause_event_id=request.id,
            cascade_id=request.envelope.cascade_id,
            dataset_version_id=asked.dataset_version_id,
            rerun_of=asked.rerun_of,
            attempts=1,
            request=request_record(request),
        )
        try:
            with self.runtime.Session.begin() as session:
                if session.scalar(sa.select(Run.run_id).where(Run.request_id == run.request_id)) is not None:
                    return None
                session.add(run)
        except IntegrityError:
            return None  # a concurrent delivery of the same request won the unique request_id
        self._announce(run, None, request, message=asked.reason)
        return run

    def transition(
        self,
        run_id: str,
        state: str,
        cause: Event[TrainingRequested] | Envelope,
        *,
        message: str | None = None,
        **fields: Any,
    ) -> Run:
        """Move the run to ``state``, announced as caused by the run's request (or its envelope)."""
        with self.runtime.Session.begin() as session:
            run = session.get(Run, run_id)
            if run is None:
                raise NotFoundError(f"no run {run_id}")
            previous = run.state
            if state not in ALLOWED.get(previous, set()):
                raise ValueError(f"run {run_id} cannot go from {previous} to {state}")
            run.state = state
            now = datetime.now(tz=UTC)
            if state == RUNNING:
                run.started_at = now
            if state in FINAL_STATES:
                run.ended_at = now
            for name, value in fields.items():
                setattr(run, name, value)
        self._announce(run, previous, cause, message=message)
        return run

    def _announce(
        self, run: Run, previous: str | None, cause: Event[TrainingRequested] | Envelope, message: str | None
    ) -> None:
        changed = RunStateChanged(
            run_id=run.run_id,
            model=run.model,
            state=run.state,
            previous_state=previous,
            dataset_version_id=run.dataset_version_id,
            message=message,
        )
        self.runtime.bus.publish(new_event(changed, producer=SERVICE, cause=cause))

    def same_training(self, model: str, fingerprint: str, run_id: str) -> Run | None:
        """Another run of ``model`` that trained (or is training) on exactly this data and configuration."""
        with self.runtime.Session() as session:
            return session.scalars(
                sa.select(Run)
                .where(
                    Run.model == model,
                    Run.fingerprint == fingerprint,
                    Run.run_id != run_id,
                    Run.state.in_((COMPLETED, RUNNING)),
                )
                .order_by(Run.created_at)
                .limit(1)
            ).first()

    def rows_after_change_served(self, run_id: str, request: Event[TrainingRequested]) -> int | None:
        """The rows after the change that the newest completed run of the same change (the request's cascade and
        ``change_started_at``) trained and was scored on, when the registry promoted its model; else None (no such
        run, or its model was rejected: the champion serving is not one a window of this change trained)."""
        asked = request.payload
        since = request_record(request).get("change_started_at")
        with self.runtime.Session() as session:
            earlier = session.scalars(
                sa.select(Run)
                .where(
                    Run.model == asked.model,
                    Run.cascade_id == request.envelope.cascade_id,
                    Run.run_id != run_id,
                    Run.state == COMPLETED,
                )
                .order_by(Run.created_at.desc())
            ).all()
            previous = next((r for r in earlier if (r.request or {}).get("change_started_at") == since), None)
            if previous is None:
                return None
            # The registry's table (read, never written here): the version the run's model became, if any.
            status = session.scalar(sa.select(ModelVersion.status).where(ModelVersion.run_id == previous.run_id))
        rows = (previous.holdout or {}).get("rows_after_change")
        return rows if status == PROMOTED and isinstance(rows, int) else None

    def take_interrupted(self) -> list[Run]:
        """Runs left pending/running by a previous process of this service (a single training instance per
        deployment owns all runs): each goes back to pending for one more execution, or, interrupted
        ``MAX_ATTEMPTS`` times already, fails. Returns the runs to execute again (the caller does)."""
        with self.runtime.Session() as session:
            stale = session.scalars(sa.select(Run).where(Run.state.in_(ACTIVE_STATES)).order_by(Run.created_at)).all()
        again = []
        for run in stale:
            cause = request_of(run).envelope
            if run.attempts >= MAX_ATTEMPTS or run.request is None:
                error = f"interrupted: the training service stopped while the run was active (attempt {run.attempts})"
                self.transition(run.run_id, FAILED, cause, message=error, error=error)
                continue
            attempt = run.attempts + 1
            if run.state == RUNNING:
                message = f"interrupted by a stop of the training service: executed again (attempt {attempt})"
                run = self.transition(run.run_id, PENDING, cause, message=message, attempts=attempt)
            else:
                with self.runtime.Session.begin() as session:
                    session.get(Run, run.run_id).attempts = attempt  # type: ignore[union-attr]
                run.attempts = attempt
            again.append(run)
        return again
