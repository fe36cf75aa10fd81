"""Every service's app counts requests and latency per route template on /metrics (driftloop.runtime.metrics)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from driftloop.contracts.settings import Settings
from driftloop.runtime.service import base_app


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_requests_are_counted_per_route_template_with_status(tmp_path: Path) -> None:
    runtime = SimpleNamespace(name="metrics-test", settings=Settings(home=tmp_path))
    app = base_app(runtime, "metrics-test")  # type: ignore[arg-type]

    @app.get("/v1/things/{thing_id}")
    def get_thing(thing_id: int) -> dict[str, int]:
        return {"thing_id": thing_id}

    route = "/v1/things/{thing_id}"
    before_ok = _sample("driftloop_http_requests_total", method="GET", route=route, status="200")
    before_bad = _sample("driftloop_http_requests_total", method="GET", route=route, status="422")
    before_count = _sample("driftloop_http_request_seconds_count", method="GET", route=route)
    client = TestClient(app)
    assert client.get("/v1/things/1").status_code == 200
    assert client.get("/v1/things/2").status_code == 200
    assert client.get("/v1/things/not-a-number").status_code == 422
    assert client.get("/no/such/path").status_code == 404

    assert _sample("driftloop_http_requests_total", method="GET", route=route, status="200") == before_ok + 2
    assert _sample("driftloop_http_requests_total", method="GET", route=route, status="422") == before_bad + 1
    assert _sample("driftloop_http_request_seconds_count", method="GET", route=route) == before_count + 3
    # Unknown paths share one label instead of one series per path.
    assert _sample("driftloop_http_requests_total", method="GET", route="<unmatched>", status="404") >= 1

    body = client.get("/metrics").text
    assert 'driftloop_http_request_seconds_bucket{le="0.005",method="GET",route="/v1/things/{thing_id}"}' in body
    assert 'driftloop_service_info{service="metrics-test"} 1.0' in body
