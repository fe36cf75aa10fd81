"""Wiring of the dashboard service."""

from __future__ import annotations

from driftloop.runtime.service import Runtime, ServiceSpec, base_app

from . import api
from .sources import Platform


def build(runtime: Runtime) -> ServiceSpec:
    platform = Platform(runtime.settings)
    app = base_app(
        runtime,
        "dashboard",
        "Web dashboard: models, versions and aliases, runs, drift and performance over time, explained cascades.",
    )
    app.state.context = api.Context(runtime.pipelines, runtime.engine, platform)
    app.include_router(api.router)
    return ServiceSpec(app=app, on_stop=[platform.close])
