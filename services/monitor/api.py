"""The monitor's HTTP API: the watched champion and window fill; drift, quality and performance history."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from driftloop.runtime.service import Runtime

from .handlers import MonitorHandlers


def router(runtime: Runtime, handlers: MonitorHandlers) -> APIRouter:
    api = APIRouter(prefix="/v1/monitor", tags=["monitor"])

    @api.get("/{model}")
    def monitor_status(model: str) -> dict[str, Any]:
        """The champion version being watched, its reference dataset version, and how full the window is."""
        return handlers.status(model)

    @api.get("/{model}/drift")
    def drift_reports(
        model: str,
        limit: int = Query(20, ge=1, le=500, description="How many reports, newest first."),
        drifted_only: bool = Query(False, description="Only windows that drifted."),
    ) -> dict[str, Any]:
        """Recent drift reports (one per closed window), newest first."""
        return {"model": model, "reports": handlers.reports(model, limit, drifted_only)}

    @api.get("/{model}/quality")
    def quality_reports(
        model: str, limit: int = Query(20, ge=1, le=500, description="How many windows, newest first.")
    ) -> dict[str, Any]:
        """Data quality of live traffic per closed window: nulls per field, values out of range or not allowed,
        categories the reference never had."""
        return {"model": model, "reports": handlers.quality_reports(model, limit)}

    @api.get("/{model}/performance")
    def performance_reports(
        model: str,
        limit: int = Query(20, ge=1, le=500, description="How many windows, newest first."),
        degraded_only: bool = Query(False, description="Only windows below the threshold."),
    ) -> dict[str, Any]:
        """Performance per window of labeled predictions (feedback joined with predictions by request id)."""
        return {"model": model, "reports": handlers.performance_reports(model, limit, degraded_only)}

    return api
