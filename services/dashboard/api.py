"""Dashboard HTTP: the HTML pages and the timeline as JSON."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from driftloop.contracts.pipeline import PipelineConfig, pipeline_for_model
from driftloop.runtime.service import Runtime

from . import pages
from .handlers import cascades
from .sources import Platform

# ?refresh=N reloads the page every N seconds (0: never).
REFRESH = Query(0, ge=0, le=3600, description="Reload the page every this many seconds (0: never).")


def router(runtime: Runtime, platform: Platform) -> APIRouter:
    api = APIRouter()

    def pipeline(model: str) -> PipelineConfig:
        return pipeline_for_model(runtime.pipelines, model)  # unknown model: NotFoundError → 404

    @api.get("/v1/timeline/{model}", tags=["timeline"])
    def timeline(model: str) -> dict[str, Any]:
        """The causal chain of every cascade of the model, newest first: trigger → run → gate numbers →
        promotion → rollout steps → serving switch, each step with its event id, time and cause, and the
        cascade explained in sentences."""
        pipeline(model)
        found = cascades(runtime.engine, model)
        return {"model": model, "cascades": [c.to_dict() for c in found]}

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    def overview(refresh: int = REFRESH) -> HTMLResponse:
        registry = platform.models()
        registered = {}
        if registry.ok:
            for m in registry.data.get("models", []):
                name = m.get("model") if isinstance(m, dict) else m
                registered[name] = m if isinstance(m, dict) else {}
        rows = []
        for name, cfg in sorted(runtime.pipelines.items()):
            versions = platform.versions(name)
            served = platform.served(name)
            found = cascades(runtime.engine, name)
            rows.append(
                {
                    "model": name,
                    "stream": cfg.stream.name,
                    "champion": (versions.data.get("aliases", {}).get("champion") if versions.ok else None),
                    "served": served.data.get("version") if served.ok else None,
                    "versions": len(versions.data.get("versions", [])) if versions.ok else None,
                    "last_cascade": f"{found[0].steps[0].event_type}: {found[0].outcome}" if found else None,
                }
            )
        return HTMLResponse(pages.overview(rows, registry.error, refresh))

    @api.get("/models/{model}", response_class=HTMLResponse, include_in_schema=False)
    def model_page(model: str, refresh: int = REFRESH) -> HTMLResponse:
        cfg = pipeline(model)
        return HTMLResponse(
            pages.model_page(
                model,
                cfg,
                versions=platform.versions(model),
                served=platform.served(model),
                runs=platform.runs(model),
                drift=platform.drift(model),
                performance=platform.performance(model),
                cascades=cascades(runtime.engine, model),
                refresh=refresh,
            )
        )

    return api
