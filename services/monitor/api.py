"""The monitor's HTTP API: the watched champion and window fill; drift, quality and performance history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from driftloop.contracts.bounds import Name
from driftloop.runtime.service import api_context

from .handlers import MonitorHandlers


@dataclass(frozen=True)
class Context:
    """What the routes need; ``service.build`` puts it on ``app.state.context``."""

    handlers: MonitorHandlers


Ctx = Annotated[Context, Depends(api_context)]

router = APIRouter(prefix="/v1/monitor", tags=["monitor"])


@router.get("/{model}")
def monitor_status(ctx: Ctx, model: Name) -> dict[str, Any]:
    """The champion version being watched, its reference dataset version, and how full the window is."""
    return ctx.handlers.status(model)


@router.get("/{model}/drift")
def drift_reports(
    ctx: Ctx,
    model: Name,
    limit: int = Query(20, ge=1, le=500, description="How many reports, newest first."),
    drifted_only: bool = Query(False, description="Only windows that drifted."),
) -> dict[str, Any]:
    """Recent drift reports (one per closed window), newest first."""
    return {"model": model, "reports": ctx.handlers.reports(model, limit, drifted_only)}


@router.get("/{model}/quality")
def quality_reports(
    ctx: Ctx, model: str, limit: int = Query(20, ge=1, le=500, description="How many windows, newest first.")
) -> dict[str, Any]:
    """Data quality of live traffic per closed window: nulls per field, values out of range or not allowed,
    categories the reference never had."""
    return {"model": model, "reports": ctx.handlers.quality_reports(model, limit)}


@router.get("/{model}/performance")
def performance_reports(
    ctx: Ctx,
    model: Name,
    limit: int = Query(20, ge=1, le=500, description="How many windows, newest first."),
    degraded_only: bool = Query(False, description="Only windows below the threshold."),
) -> dict[str, Any]:
    """Performance per window of labeled predictions (feedback joined with predictions by request id)."""
    return {"model": model, "reports": ctx.handlers.performance_reports(model, limit, degraded_only)}
