"""The triggers service's HTTP API: manual retrain requests and the decision log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from driftloop.contracts.bounds import Name, Text
from driftloop.runtime.service import api_context

from .handlers import TriggerHandlers


class RetrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Text = Field(default="manual retrain", min_length=1, max_length=2000, description="Why, in words.")
    dataset_version_id: Name | None = Field(
        default=None, description="Pin the training input to this dataset version (STREAM@vN); default: latest."
    )


@dataclass(frozen=True)
class Context:
    """What the routes need; ``service.build`` puts it on ``app.state.context``."""

    handlers: TriggerHandlers


Ctx = Annotated[Context, Depends(api_context)]

router = APIRouter(prefix="/v1/models", tags=["triggers"])


@router.post("/{name}/retrain", status_code=202)
def retrain(ctx: Ctx, name: Name, body: RetrainBody | None = None) -> dict[str, Any]:
    """Ask for a retrain of model ``name`` on its latest materialized dataset version (emits
    ``TrainingRequested`` with trigger ``manual``). 404: unknown model; 409: no dataset version yet, or a
    training run of the model is active or awaits the gate (code ``run_in_progress``: ask again when it ends)."""
    body = body or RetrainBody()
    return ctx.handlers.request_manual(name, body.reason, body.dataset_version_id)


@router.get("/{name}/requests")
def requests(ctx: Ctx, name: Name, limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
    """Every trigger decision for the model (requested, pending, suppressed with why), newest first."""
    return {"model": name, "requests": ctx.handlers.requests(name, limit)}


@router.get("/{name}/trigger-state")
def trigger_state(ctx: Ctx, name: Name) -> dict[str, Any]:
    """What the triggers service knows: champion, active runs, last request, pending request, latest data."""
    return ctx.handlers.model_state(name)
