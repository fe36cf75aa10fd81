"""Wiring of the dashboard service."""

from __future__ import annotations

from collections.abc import Callable

from driftloop.contracts.settings import Settings
from driftloop.runtime.service import Runtime, ServiceSpec, base_app

from . import api
from .sources import Platform


def _auth_headers(settings: Settings) -> Callable[[], dict[str, str]]:
    """The bearer token for the other services' APIs when the platform has one (read per request: it may be
    written after start)."""
    try:
        from driftloop.clients.credentials import auth_headers
    except ImportError:  # a platform without token checks
        return lambda: {}
    return lambda: auth_headers(settings)


def build(runtime: Runtime) -> ServiceSpec:
    platform = Platform(runtime.settings, headers=_auth_headers(runtime.settings))
    app = base_app(
        runtime,
        "dashboard",
        "Web dashboard: models, versions and aliases, runs, drift and performance over time, explained cascades.",
    )
    app.state.context = api.Context(runtime.pipelines, runtime.engine, platform)
    app.include_router(api.router)
    return ServiceSpec(app=app, on_stop=[platform.close])
