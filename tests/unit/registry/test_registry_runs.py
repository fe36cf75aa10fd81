"""What the registry asks the training service about a run: its record, or None when training cannot tell."""

from __future__ import annotations

import httpx

from driftloop.clients.http import ServiceClient
from driftloop.services.registry.runs import training_run


def training(handler: httpx.MockTransport) -> ServiceClient:
    return ServiceClient("training", base_url="http://training.test", transport=handler, retries=0)


def test_the_run_record_of_the_training_service() -> None:
    record = {"run_id": "r1", "code_version": "abc123"}
    ok = httpx.MockTransport(lambda request: httpx.Response(200, json=record | {"path": request.url.path}))
    assert training_run(training(ok), "r1") == record | {"path": "/v1/runs/r1"}


def test_none_when_training_does_not_know_the_run_or_does_not_answer() -> None:
    unknown = httpx.MockTransport(lambda _request: httpx.Response(404, json={"detail": "no run r1"}))
    assert training_run(training(unknown), "r1") is None

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    assert training_run(training(httpx.MockTransport(refused)), "r1") is None
