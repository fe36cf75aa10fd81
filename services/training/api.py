"""HTTP API of the training service: runs and their logs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from driftloop.db.models import Run
from driftloop.errors import NotFoundError
from driftloop.objectstore import ObjectStore
from driftloop.service import Runtime

from .runs import run_as_dict

RunState = Literal["pending", "running", "completed", "failed"]


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
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> dict[str, Any]:
        """Runs, newest first, optionally filtered by model, state and trigger."""
        query = sa.select(Run).order_by(Run.created_at.desc()).limit(limit)
        if model is not None:
            query = query.where(Run.model == model)
        if state is not None:
            query = query.where(Run.state == state)
        if trigger is not None:
            query = query.where(Run.trigger == trigger)
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

    return api
