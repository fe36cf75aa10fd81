"""The monitor's HTTP API: the watched champion and window fill, and recent drift reports."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from driftloop.service import Runtime

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

    return api
