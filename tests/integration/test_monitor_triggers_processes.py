"""The monitor and triggers services as processes (``python -m driftloop.services.<name>``): they start, join
their consumer groups, report ready on /healthz and answer their routes; SIGTERM stops them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from driftloop.clients.db import migrate
from driftloop.contracts.settings import Settings, settings_env
from driftloop.ops.procs import free_port, http_ready, spawn, stop_pid, wait_until

pytestmark = pytest.mark.integration

GROUPS = {"monitor": "driftloop-monitor-faust", "triggers": "driftloop-triggers"}


@pytest.mark.parametrize("service", ["monitor", "triggers"])
def test_service_process_starts_and_answers(
    service: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    port = free_port()
    settings = make_settings(services={f"{service}_port": port})
    migrate(settings.database_url)
    proc = spawn(
        [sys.executable, "-m", f"driftloop.services.{service}"], tmp_path / f"{service}.out", settings_env(settings)
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ready(f"{base}/healthz"), 90, f"the {service} service to be ready")
        health = httpx.get(f"{base}/healthz").json()
        assert health["service"] == service
        # The monitor's stream engine is a faust agent in a group of its own.
        assert [c["group"] for c in health["consumers"]] == [GROUPS[service]]
        if service == "monitor":
            status = httpx.get(f"{base}/v1/monitor/fraud-detector").json()
            assert status["version"] is None
            assert status["window_size"] == 400
            assert httpx.get(f"{base}/v1/monitor/nope/drift").status_code == 404
        else:
            # Nothing is materialized in this fresh database: 409; an unknown model: 404.
            response = httpx.post(f"{base}/v1/models/fraud-detector/retrain", json={"reason": "smoke"})
            assert response.status_code == 409
            assert "transactions" in response.json()["detail"]
            assert httpx.post(f"{base}/v1/models/nope/retrain", json={}).status_code == 404
            assert httpx.get(f"{base}/v1/models/fraud-detector/requests").json()["requests"] == []
    finally:
        assert stop_pid(proc.pid)
