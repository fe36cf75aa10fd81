"""What the registry asks the training service about a run, through its HTTP API (never its modules)."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from driftloop.clients.credentials import client_token
from driftloop.clients.http import ServiceClient
from driftloop.contracts.settings import Settings
from driftloop.errors import DriftloopError

log = logging.getLogger(__name__)

# A run's details only add its code version to the lineage: never hold a registration up for long.
TIMEOUT_SECONDS = 3.0


def training_client(settings: Settings) -> ServiceClient:
    """The training service's API, with the token read per call (a token file may be written after start)."""
    token = partial(client_token, settings)
    return ServiceClient("training", settings, token=token, timeout=TIMEOUT_SECONDS, retries=0)


def training_run(training: ServiceClient, run_id: str) -> dict[str, Any] | None:
    """The run's record from the training service's API (``GET /v1/runs/{id}``); None if it cannot tell."""
    try:
        return training.get(f"/v1/runs/{run_id}")
    except (DriftloopError, ValueError) as exc:  # no answer, an error answer, or not JSON
        log.info("run %s: no record from the training service (%s); lineage without code version", run_id, exc)
        return None
