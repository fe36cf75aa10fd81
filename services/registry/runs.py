"""What the registry asks the training service about a run, through its HTTP API (never its modules)."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from driftloop.clients.credentials import auth_headers
from driftloop.contracts.settings import Settings

log = logging.getLogger(__name__)


def training_run(settings: Settings, run_id: str) -> dict[str, Any] | None:
    """The run's record from the training service's API (``GET /v1/runs/{id}``); None if it cannot tell."""
    url = f"{settings.services.url('training')}/v1/runs/{run_id}"
    try:
        response = httpx.get(url, headers=auth_headers(settings), timeout=3.0)
    except httpx.HTTPError as exc:
        log.info("run %s: training service not reachable (%s); lineage without code version", run_id, exc)
        return None
    if response.status_code != 200:
        log.info("run %s: training answered %d; lineage without code version", run_id, response.status_code)
        return None
    return response.json()
