"""HTTP API of the training service: runs, their logs, abort and rerun."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from driftloop.clients.db.models import Run
from driftloop.clients.objectstore import ObjectStore
from driftloop.contracts.bounds import Name, Text
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import Payload, TrainingRequested
from driftloop.contracts.settings import Settings
from driftloop.errors import ConflictError, NotFoundError
from driftloop.runtime.service import api_context

from .runs import ACTIVE_STATES, SERVICE, request_abort, run_as_dict

RunState = Literal["pending", "running", "completed", "failed", "aborted", "skipped"]


class RerunRequest(BaseModel):
    reason: Text = Field(default="rerun", max_length=500)


@dataclass(frozen=True)
class Context:
    """What the routes need; ``service.build`` puts it on ``app.state.context``."""

    settings: Settings
    Session: sessionmaker[Session]
    publish: Callable[[Event[Payload]], None]
    store: ObjectStore
    live_log: Callable[[str], str | None]

    def get_run(self, run_id: str) -> Run:
        with self.Session() as session:
            run = session.get(Run, run_id)
        if run is None:
            raise NotFoundError(f"no run {run_id!r}")
        return run


Ctx = Annotated[Context, Depends(api_context)]

router = APIRouter(prefix="/v1/runs", tags=["runs"])


@router.get("")
def list_runs(
    ctx: Ctx,
    model: Name | None = None,
    state: RunState | None = None,
    trigger: Name | None = None,
    rerun_of: Name | None = None,
    request_id: Name | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
) -> dict[str, Any]:
    """Runs, newest first, optionally filtered by model, state, trigger, the run they re-execute and the training
    request they run (one at most)."""
    query = sa.select(Run).order_by(Run.created_at.desc()).limit(limit)
    if model is not None:
        query = query.where(Run.model == model)
    if state is not None:
        query = query.where(Run.state == state)
    if trigger is not None:
        query = query.where(Run.trigger == trigger)
    if rerun_of is not None:
        query = query.where(Run.rerun_of == rerun_of)
    if request_id is not None:
        query = query.where(Run.request_id == request_id)
    with ctx.Session() as session:
        runs = session.scalars(query).all()
    return {"runs": [run_as_dict(r) for r in runs]}


@router.get("/{run_id}")
def run_detail(ctx: Ctx, run_id: Name) -> dict[str, Any]:
    return run_as_dict(ctx.get_run(run_id))


@router.get("/{run_id}/logs", response_class=PlainTextResponse)
def run_logs(ctx: Ctx, run_id: Name) -> PlainTextResponse:
    """The run's log: live while it runs, from the object store once it ended."""
    run = ctx.get_run(run_id)
    live = ctx.live_log(run_id)
    if live is not None:
        return PlainTextResponse(live)
    if run.log_uri is None:
        raise NotFoundError(f"run {run_id} has no log yet (state {run.state})")
    return PlainTextResponse(ctx.store.get_bytes(ctx.store.key_of(run.log_uri)).decode())


@router.post("/{run_id}/abort", status_code=202)
def abort_run(ctx: Ctx, run_id: Name) -> dict[str, Any]:
    """Abort a pending or running run: its Ray Tune trials and its fit are stopped (their CPUs freed) within
    about a second; the run ends in state ``aborted`` (a RunStateChanged event). 409 if it already ended."""
    run = ctx.get_run(run_id)
    if run.state not in ACTIVE_STATES:
        raise ConflictError(
            f"run {run_id} is {run.state}: only a pending or running run can be aborted", code="run_ended"
        )
    request_abort(ctx.settings, run_id)
    return {"run_id": run_id, "state": run.state, "abort_requested": True}


@router.post("/{run_id}/rerun", status_code=202)
def rerun(ctx: Ctx, run_id: Name, body: RerunRequest | None = None) -> dict[str, Any]:
    """Re-execute a completed run from its record: same dataset version, features, params and seed, no search.
    Publishes a TrainingRequested (trigger ``rerun``); the new run has ``rerun_of`` = this run."""
    run = ctx.get_run(run_id)
    if run.state != "completed":
        raise ConflictError(
            f"run {run_id} is {run.state}: only a completed run can be re-executed", code="run_not_completed"
        )
    request_id = f"rerun-{uuid.uuid4().hex[:16]}"
    ctx.publish(
        new_event(
            TrainingRequested(
                request_id=request_id,
                model=run.model,
                trigger="rerun",
                reason=(body.reason if body else "rerun") + f" (rerun of {run_id})",
                dataset_version_id=run.dataset_version_id,
                rerun_of=run_id,
                pinned=True,
            ),
            producer=SERVICE,
        )
    )
    return {"request_id": request_id, "rerun_of": run_id, "model": run.model}
