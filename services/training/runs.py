"""Run records and their state machine: every change is written to ``runs`` and announced as RunStateChanged."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from driftloop.clients.db.models import Run
from driftloop.contracts.events import Envelope, Event, new_event
from driftloop.contracts.payloads import RunStateChanged, TrainingRequested
from driftloop.contracts.settings import Settings
from driftloop.errors import NotFoundError
from driftloop.runtime.service import Runtime

log = logging.getLogger(__name__)

SERVICE = "training"
PENDING, RUNNING, COMPLETED, FAILED, ABORTED = "pending", "running", "completed", "failed", "aborted"
ACTIVE_STATES = (PENDING, RUNNING)
ALLOWED = {PENDING: {RUNNING, FAILED, ABORTED}, RUNNING: {COMPLETED, FAILED, ABORTED}}
FINAL_STATES = (COMPLETED, FAILED, ABORTED)


def abort_flag(settings: Settings, run_id: str) -> Path:
    """The file whose existence aborts a run: the HTTP thread writes it, the search's Stopper and the fit's
    wait loop (in this process, the Ray driver) read it."""
    return settings.home / "run-aborts" / run_id


def request_abort(settings: Settings, run_id: str) -> None:
    flag = abort_flag(settings, run_id)
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.write_text(datetime.now(tz=UTC).isoformat())


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

    def fail_interrupted(self) -> list[str]:
        """Runs left pending/running by a previous process of this service can never finish: fail them, so that
        no run stays active forever (a single training instance per deployment owns all runs)."""
        with self.runtime.Session() as session:
            stale = session.scalars(sa.select(Run).where(Run.state.in_(ACTIVE_STATES))).all()
        failed = []
        for run in stale:
            # The request event is gone; a stand-in with its id and cascade keeps the lineage of the change.
            cause = Envelope(
                event_id=run.cause_event_id or run.run_id,
                event_type=TrainingRequested.event_type,
                occurred_at=run.created_at,
                caused_by=None,
                cascade_id=run.cascade_id or run.run_id,
                producer=SERVICE,
            )
            error = "interrupted: the training service stopped while the run was active"
            self.transition(run.run_id, FAILED, cause, message=error, error=error)
            failed.append(run.run_id)
        return failed
