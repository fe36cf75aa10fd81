"""HTTP API of the training service: runs, their logs, abort and rerun."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from driftloop.clients.db.models import Run
from driftloop.clients.objectstore import ObjectStore
from driftloop.contracts.events import new_event
from driftloop.contracts.payloads import TrainingRequested
from driftloop.errors import NotFoundError
from driftloop.runtime.service import Runtime

from .runs import ACTIVE_STATES, SERVICE, request_abort, run_as_dict

RunState = Literal["pending", "running", "completed", "failed", "aborted"]


class RerunRequest(BaseModel):
    reason: str = Field(default="rerun", max_length=500)


def router(runtime: Runtime, store: ObjectStore, live_log: Callable[[str], str | None]) -> APIRouter:
    api = APIRouter(prefix="/v1/runs", tags=["runs"])

    def get_run(run_id: str) -> Run:
        with runtime.Session() as session:
            run = session.get(Run, run_id)
        if run is None:
            raise NotFoundError(f"no run {run_id!r}")
        return run

    @api.get("")
    def list_runs(
        model: str | None = None,
        state: RunState | None = None,
        trigger: str | None = None,
        rerun_of: str | None = None,
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> dict[str, Any]:
        """Runs, newest first, optionally filtered by model, state, trigger and the run they re-execute."""
        query = sa.select(Run).order_by(Run.created_at.desc()).limit(limit)
        if model is not None:
            query = query.where(Run.model == model)
        if state is not None:
            query = query.where(Run.state == state)
        if trigger is not None:
            query = query.where(Run.trigger == trigger)
        if rerun_of is not None:
            query = query.where(Run.rerun_of == rerun_of)
        with runtime.Session() as session:
            runs = session.scalars(query).all()
        return {"runs": [run_as_dict(r) for r in runs]}

    @api.get("/{run_id}")
    def run_detail(run_id: str) -> dict[str, Any]:
        return run_as_dict(get_run(run_id))

    @api.get("/{run_id}/logs", response_class=PlainTextResponse)
    def run_logs(run_id: str) -> PlainTextResponse:
        """The run's log: live while it runs, from the object store once it ended."""
        run = get_run(run_id)
        live = live_log(run_id)
        if live is not None:
            return PlainTextResponse(live)
        if run.log_uri is None:
            raise NotFoundError(f"run {run_id} has no log yet (state {run.state})")
        return PlainTextResponse(store.get_bytes(store.key_of(run.log_uri)).decode())

    @api.post("/{run_id}/abort", status_code=202)
    def abort_run(run_id: str) -> dict[str, Any]:
        """Abort a pending or running run: its Ray Tune trials and its fit are stopped (their CPUs freed) within
        about a second; the run ends in state ``aborted`` (a RunStateChanged event). 409 if it already ended."""
        run = get_run(run_id)
        if run.state not in ACTIVE_STATES:
            raise HTTPException(409, f"run {run_id} is {run.state}: only a pending or running run can be aborted")
        request_abort(runtime.settings, run_id)
        return {"run_id": run_id, "state": run.state, "abort_requested": True}

    @api.post("/{run_id}/rerun", status_code=202)
    def rerun(run_id: str, body: RerunRequest | None = None) -> dict[str, Any]:
        """Re-execute a completed run from its record: same dataset version, features, params and seed, no search.
        Publishes a TrainingRequested (trigger ``rerun``); the new run has ``rerun_of`` = this run."""
        run = get_run(run_id)
        if run.state != "completed":
            raise HTTPException(409, f"run {run_id} is {run.state}: only a completed run can be re-executed")
        request_id = f"rerun-{uuid.uuid4().hex[:16]}"
        runtime.bus.publish(
            new_event(
                TrainingRequested(
                    request_id=request_id,
                    model=run.model,
                    trigger="rerun",
                    reason=(body.reason if body else "rerun") + f" (rerun of {run_id})",
                    dataset_version_id=run.dataset_version_id,
                    rerun_of=run_id,
                ),
                producer=SERVICE,
            )
        )
        return {"request_id": request_id, "rerun_of": run_id, "model": run.model}

    return api
