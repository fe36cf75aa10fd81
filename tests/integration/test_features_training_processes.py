"""The features and training services run as their own processes (``python -m driftloop.services.<name>``),
become ready (consumers assigned, Ray up) and stop cleanly on SIGTERM. The training process starts its local Ray at
once (a new stack's first stream is coming) and lets it sleep when nothing comes."""

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


@pytest.mark.parametrize("service", ["features", "training"])
def test_service_process_gets_ready_and_stops(
    service: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(ray={"num_cpus": 1, "idle_shutdown_seconds": 4, "warm_workers": False})
    migrate(settings.database_url)
    port = free_port()
    env = {**settings_env(settings), f"DRIFTLOOP_SERVICES__{service.upper()}_PORT": str(port)}
    proc = spawn([sys.executable, "-m", f"driftloop.services.{service}"], tmp_path / f"{service}.out", env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ready(f"{url}/healthz"), 120, f"the {service} service")
        health = httpx.get(f"{url}/healthz").json()
        # Training has a second consumer (FeaturesMaterialized, a group of its own): its request consumer is named.
        assert health["ready"] and f"driftloop-{service}" in [c["group"] for c in health["consumers"]]
        if service == "features":
            listing = httpx.get(f"{url}/v1/features").json()["streams"]
            assert [s["stream"] for s in listing] == ["transactions"]
        else:
            assert health["checks"] == {"ray": True}
            # The session's broker may still hold other tests' requests for models this service does not know
            # (it records them as failed runs); none of its own model's runs exist.
            runs = httpx.get(f"{url}/v1/runs").json()["runs"]
            assert "fraud-detector" not in {run["model"] for run in runs}

            def ray_state() -> str:
                return str(httpx.get(f"{url}/healthz").json()["ray_state"])

            seen: set[str] = set()
            wait_until(lambda: seen.add(ray_state()) or "awake" in seen, 90, "Ray started with the process")
            wait_until(lambda: ray_state() == "asleep", 90, "the idle Ray to go to sleep")
    finally:
        assert stop_pid(proc.pid)
    assert proc.wait(timeout=5) == 0, (tmp_path / f"{service}.out").read_text()[-2000:]
