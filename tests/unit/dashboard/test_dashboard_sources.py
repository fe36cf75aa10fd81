"""What the dashboard asks the other services: an answer, or an error to show on the page, never an exception."""

from __future__ import annotations

from pathlib import Path

import httpx

from driftloop.clients.http import ServiceClient
from driftloop.contracts.settings import Settings
from driftloop.ops.procs import free_port
from driftloop.services.dashboard.sources import Platform


def platform_with(tmp_path: Path, service: str, handler: httpx.MockTransport) -> Platform:
    platform = Platform(Settings(home=tmp_path))
    platform.clients[service] = ServiceClient(service, base_url="http://svc.test", transport=handler, retries=0)
    return platform


def test_an_answer_carries_the_data(tmp_path: Path) -> None:
    seen: list[str] = []

    def registry(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"models": ["m"]})

    platform = platform_with(tmp_path, "training", httpx.MockTransport(registry))
    answer = platform.runs("m", limit=5)
    assert answer.ok and answer.data == {"models": ["m"]}
    assert seen == ["http://svc.test/v1/runs?model=m&limit=5"]


def test_a_service_that_is_not_running_is_unavailable(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    platform = Platform(Settings(home=tmp_path, services={"training_port": port}))
    answer = platform.runs("m")
    assert not answer.ok and answer.error == "training unavailable (unreachable)"
    platform.close()


def test_an_error_answer_is_shown_with_its_status_and_detail(tmp_path: Path) -> None:
    missing = httpx.MockTransport(lambda _request: httpx.Response(404, json={"detail": "no model named m"}))
    answer = platform_with(tmp_path, "monitor", missing).drift("m")
    assert not answer.ok and answer.error == "monitor answered 404: no model named m"


def test_an_answer_that_is_not_json_is_an_error(tmp_path: Path) -> None:
    html = httpx.MockTransport(lambda _request: httpx.Response(200, text="<html>"))
    answer = platform_with(tmp_path, "serving", html).served("m")
    assert answer.error == "serving: answer is not JSON"
