"""Dashboard HTTP: the HTML pages and the timeline as JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse

from driftloop.contracts.bounds import Name
from driftloop.contracts.pipeline import PipelineConfig, pipeline_for_model
from driftloop.runtime.service import api_context

from . import pages
from .handlers import cascades
from .sources import Platform

# ?refresh=N reloads the page every N seconds (0: never).
REFRESH = Query(0, ge=0, le=3600, description="Reload the page every this many seconds (0: never).")


@dataclass(frozen=True)
class Context:
    """What the routes need; ``service.build`` puts it on ``app.state.context``."""

    pipelines: Mapping[str, PipelineConfig]
    engine: sa.Engine
    platform: Platform

    def pipeline(self, model: str) -> PipelineConfig:
        return pipeline_for_model(self.pipelines, model)  # unknown model: NotFoundError → 404

    def overview_row(self, name: str, cfg: PipelineConfig) -> dict[str, Any]:
        versions = self.platform.versions(name)
        served = self.platform.served(name)
        found = cascades(self.engine, name)
        return {
            "model": name,
            "stream": cfg.stream.name,
            "champion": (versions.data.get("aliases", {}).get("champion") if versions.ok else None),
            "served": served.data.get("version") if served.ok else None,
            "versions": len(versions.data.get("versions", [])) if versions.ok else None,
            "last_cascade": f"{found[0].steps[0].event_type}: {found[0].outcome}" if found else None,
        }


Ctx = Annotated[Context, Depends(api_context)]

router = APIRouter()


@router.get("/v1/timeline/{model}", tags=["timeline"])
def timeline(ctx: Ctx, model: Name) -> dict[str, Any]:
    """The causal chain of every cascade of the model, newest first: trigger → run → gate numbers →
    promotion → rollout steps → serving switch, each step with its event id, time and cause, and the
    cascade explained in sentences."""
    ctx.pipeline(model)
    found = cascades(ctx.engine, model)
    return {"model": model, "cascades": [c.to_dict() for c in found]}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def overview(ctx: Ctx, refresh: int = REFRESH) -> HTMLResponse:
    registry = ctx.platform.models()
    # The models list is not shown; its error is (the registry not answering).
    rows = [ctx.overview_row(name, cfg) for name, cfg in sorted(ctx.pipelines.items())]
    return HTMLResponse(pages.overview(rows, registry.error, refresh))


@router.get("/models/{model}", response_class=HTMLResponse, include_in_schema=False)
def model_page(ctx: Ctx, model: Name, refresh: int = REFRESH) -> HTMLResponse:
    cfg = ctx.pipeline(model)
    platform = ctx.platform
    return HTMLResponse(
        pages.model_page(
            model,
            cfg,
            versions=platform.versions(model),
            served=platform.served(model),
            runs=platform.runs(model),
            drift=platform.drift(model),
            performance=platform.performance(model),
            cascades=cascades(ctx.engine, model),
            refresh=refresh,
        )
    )
