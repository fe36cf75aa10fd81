"""The triggers service's HTTP API: manual retrain requests and the decision log."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from driftloop.runtime.service import Runtime

from .handlers import RetrainConflict, TriggerHandlers


class RetrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="manual retrain", min_length=1, max_length=2000, description="Why, in words.")
    dataset_version_id: str | None = Field(
        default=None, description="Pin the training input to this dataset version (STREAM@vN); default: latest."
    )


def router(runtime: Runtime, handlers: TriggerHandlers) -> APIRouter:
    api = APIRouter(prefix="/v1/models", tags=["triggers"])

    @api.post("/{name}/retrain", status_code=202)
    def retrain(name: str, body: RetrainBody | None = None) -> dict[str, Any]:
        """Ask for a retrain of model ``name`` on its latest materialized dataset version (emits
        ``TrainingRequested`` with trigger ``manual``). 404: unknown model; 409: no dataset version yet, or a
        training run of the model is active."""
        try:
            body = body or RetrainBody()
            return handlers.request_manual(name, body.reason, body.dataset_version_id)
        except RetrainConflict as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None

    @api.get("/{name}/requests")
    def requests(name: str, limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
        """Every trigger decision for the model (requested, pending, suppressed with why), newest first."""
        return {"model": name, "requests": handlers.requests(name, limit)}

    @api.get("/{name}/trigger-state")
    def trigger_state(name: str) -> dict[str, Any]:
        """What the triggers service knows: champion, active runs, last request, pending request, latest data."""
        return handlers.model_state(name)

    return api
