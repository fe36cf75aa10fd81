"""``driftloop.client.Client``: each method is one call to the right service and path, with the token, the escaped
path segments and the headers it needs; an error answer raises from ``driftloop.errors``."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

import driftloop.client
from driftloop.client import Client
from driftloop.errors import ConflictError, NotFoundError, ServiceError, ValidationFailed

SERVICES = ("ingestion", "serving", "registry", "training", "triggers", "dashboard")


class Recorder:
    def __init__(self, status: int = 200, body: Any = None) -> None:
        self.requests: list[httpx.Request] = []
        self.status, self.body = status, body

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, json=self.body if self.body is not None else {"ok": True})

    def client(self) -> Client:
        urls = {name: f"http://{name}.test" for name in SERVICES}
        return Client(urls=urls, token="tok", transport=httpx.MockTransport(self), retries=0)


def test_the_public_surface_is_one_class() -> None:
    assert driftloop.client.__all__ == ["Client"]


@pytest.mark.parametrize(
    ("call", "method", "url", "body"),
    [
        (lambda c: c.stream_schema("tx"), "GET", "http://ingestion.test/v1/streams/tx/schema", None),
        (
            lambda c: c.ingest("tx", [{"a": 1}]),
            "POST",
            "http://ingestion.test/v1/streams/tx/records",
            {"records": [{"a": 1}]},
        ),
        (lambda c: c.dataset("tx@v2"), "GET", "http://ingestion.test/v1/datasets/tx%40v2", None),
        (
            lambda c: c.predict("m", [{"x": 1}]),
            "POST",
            "http://serving.test/v1/models/m/predict",
            {"instances": [{"x": 1}]},
        ),
        (
            lambda c: c.infer("m", [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}], version=3),
            "POST",
            "http://serving.test/v2/models/m/versions/3/infer",
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]},
        ),
        (
            lambda c: c.feedback("m", [{"actual": 1, "request_id": "r", "index": 0}]),
            "POST",
            "http://serving.test/v1/models/m/feedback",
            {"feedback": [{"actual": 1, "request_id": "r", "index": 0}]},
        ),
        (
            lambda c: c.set_alias("m", "champion", 2, reason="better"),
            "PUT",
            "http://registry.test/v1/models/m/aliases/champion",
            {"version": 2, "reason": "better"},
        ),
        (
            lambda c: c.rollback("m", to=1, reason="r"),
            "POST",
            "http://registry.test/v1/models/m/rollback",
            {"reason": "r", "to": 1},
        ),
        (lambda c: c.runs(model="m"), "GET", "http://training.test/v1/runs?limit=50&model=m", None),
        (
            lambda c: c.retrain("m", dataset="tx@v1"),
            "POST",
            "http://triggers.test/v1/models/m/retrain",
            {"reason": "manual", "dataset_version_id": "tx@v1"},
        ),
        (lambda c: c.timeline("m"), "GET", "http://dashboard.test/v1/timeline/m", None),
        # A name is one path segment, never more path.
        (lambda c: c.versions("../runs"), "GET", "http://registry.test/v1/models/..%2Fruns/versions", None),
    ],
)
def test_each_method_calls_its_service(call: Any, method: str, url: str, body: Any) -> None:
    recorder = Recorder()
    with recorder.client() as client:
        assert call(client) == {"ok": True}
    (request,) = recorder.requests
    assert (request.method, str(request.url)) == (method, url)
    assert request.headers["authorization"] == "Bearer tok"
    assert (json.loads(request.content) if request.content else None) == body


def test_an_idempotency_key_is_sent_as_its_header() -> None:
    recorder = Recorder()
    with recorder.client() as client:
        client.ingest("tx", [], idempotency_key="batch-7")
    assert recorder.requests[0].headers["idempotency-key"] == "batch-7"


@pytest.mark.parametrize(
    ("status", "error"), [(404, NotFoundError), (409, ConflictError), (422, ValidationFailed), (418, ServiceError)]
)
def test_error_answers_raise_from_the_exception_tree(status: int, error: type[Exception]) -> None:
    recorder = Recorder(status, {"detail": "no such model 'm'", "code": "model_not_found"})
    with recorder.client() as client, pytest.raises(error) as caught:
        client.versions("m")
    assert "no such model 'm'" in str(caught.value)


def test_a_service_that_does_not_answer_is_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = Client(urls={"registry": "http://registry.test"}, token="t", transport=httpx.MockTransport(refuse))
    with client, pytest.raises(ServiceError) as caught:
        client.models()
    assert caught.value.code == "unreachable"
