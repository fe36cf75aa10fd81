"""``driftloop.client.Client``: each method is one call to the right service and path, with the token, the escaped
path segments and the headers it needs; its answer comes back typed (unknown fields ignored, the JSON kept as
``raw``); an error answer, or one the client cannot read, raises from ``driftloop.errors``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

import driftloop.client
from driftloop.client import Client, ModelVersion, Run, Served, ServedModels
from driftloop.errors import ConflictError, NotFoundError, ServiceError, ValidationFailed

SERVICES = ("ingestion", "serving", "registry", "training", "triggers", "dashboard")


# What each service answers (the fields its api.py returns; the client reads them into typed models).
VERSION = {
    "model": "m",
    "version": 2,
    "status": "promoted",
    "aliases": ["champion"],
    "description": "",
    "tags": {"owner": "risk"},
    "signature": {},
    "run_id": "run-1",
    "artifact_uri": "file:///objects/models/m/run-1/model.zip",
    "artifact_sha256": "ab" * 32,
    "dataset_version_id": "tx@v1",
    "feature_set_uri": None,
    "metrics": {"roc_auc": 0.81},
    "lineage": {},
    "gate": {"passed": True},
    "created_at": "2026-12-03T10:00:00+00:00",
    "decided_at": None,
}
RUN = {
    "run_id": "run-1",
    "request_id": "req-1",
    "model": "m",
    "state": "completed",
    "trigger": "manual",
    "params": {"num_leaves": 15},
    "metrics": {"roc_auc": 0.81},
    "created_at": "2026-12-03T10:00:00.123456",
}
PREDICTION = {"model": "m", "version": 2, "request_id": "r1", "predictions": [0.1]}
ANSWERS: dict[str, Any] = {
    "schema": {
        "stream": "tx",
        "topic": "tx",
        "subject": "driftloop.stream.tx-value",
        "schema": {"type": "record", "name": "tx", "fields": []},
        "entity_key": "customer_id",
        "event_time": "event_time",
        "label": "is_fraud",
    },
    "ingest": {"request_id": "q1", "accepted": 1, "rejected": [], "object_key": "landed/tx/http-q1.parquet"},
    "dataset": {"dataset_version_id": "tx@v2", "stream": "tx", "version": 2, "row_count": 10, "sources": []},
    "prediction": PREDICTION,
    "infer": {
        "model_name": "m",
        "model_version": "3",
        "id": "r1",
        "parameters": {"request_id": "r1"},
        "outputs": [{"name": "predict", "datatype": "FP64", "shape": [1], "data": [0.1]}],
    },
    "feedback": {"model": "m", "accepted": 1, "feedback": []},
    "move": {"model": "m", "alias": "champion", "version": 2, "previous_version": 1, "event_id": "e1"},
    "runs": {"runs": [RUN]},
    "request": {"request_id": "q1", "model": "m", "trigger": "manual", "status": "requested"},
    "timeline": {"model": "m", "cascades": []},
    "versions": {"model": "m", "aliases": {"champion": 2}, "versions": [VERSION]},
}


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


def test_the_public_surface_is_the_client_and_its_answers() -> None:
    exported = driftloop.client.__all__
    assert "Client" in exported and {"Prediction", "ModelVersion", "Run", "Alias", "IngestResult"} <= set(exported)
    answers = [getattr(driftloop.client, name) for name in exported if name != "Client"]
    assert all(issubclass(kind, driftloop.client.Entity) for kind in answers)


@pytest.mark.parametrize(
    ("call", "method", "url", "body", "answer", "expected"),
    [
        (
            lambda c: c.stream_schema("tx").subject,
            "GET",
            "http://ingestion.test/v1/streams/tx/schema",
            None,
            "schema",
            "driftloop.stream.tx-value",
        ),
        (
            lambda c: c.ingest("tx", [{"a": 1}]).accepted,
            "POST",
            "http://ingestion.test/v1/streams/tx/records",
            {"records": [{"a": 1}]},
            "ingest",
            1,
        ),
        (
            lambda c: c.dataset("tx@v2").version,
            "GET",
            "http://ingestion.test/v1/datasets/tx%40v2",
            None,
            "dataset",
            2,
        ),
        (
            lambda c: c.predict("m", [{"x": 1}]).predictions,
            "POST",
            "http://serving.test/v1/models/m/predict",
            {"instances": [{"x": 1}]},
            "prediction",
            [0.1],
        ),
        (
            lambda c: (
                c.infer("m", [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}], version=3)
                .outputs[0]
                .data
            ),
            "POST",
            "http://serving.test/v2/models/m/versions/3/infer",
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]},
            "infer",
            [0.1],
        ),
        (
            lambda c: c.feedback("m", [{"actual": 1, "request_id": "r", "index": 0}]).accepted,
            "POST",
            "http://serving.test/v1/models/m/feedback",
            {"feedback": [{"actual": 1, "request_id": "r", "index": 0}]},
            "feedback",
            1,
        ),
        (
            lambda c: c.set_alias("m", "champion", 2, reason="better").previous_version,
            "PUT",
            "http://registry.test/v1/models/m/aliases/champion",
            {"version": 2, "reason": "better"},
            "move",
            1,
        ),
        (
            lambda c: c.rollback("m", to=1, reason="r").event_id,
            "POST",
            "http://registry.test/v1/models/m/rollback",
            {"reason": "r", "to": 1},
            "move",
            "e1",
        ),
        (
            lambda c: [r.run_id for r in c.runs(model="m")],
            "GET",
            "http://training.test/v1/runs?limit=50&model=m",
            None,
            "runs",
            ["run-1"],
        ),
        (
            lambda c: c.retrain("m", dataset="tx@v1").status,
            "POST",
            "http://triggers.test/v1/models/m/retrain",
            {"reason": "manual", "dataset_version_id": "tx@v1"},
            "request",
            "requested",
        ),
        (lambda c: c.timeline("m"), "GET", "http://dashboard.test/v1/timeline/m", None, "timeline", []),
        # A name is one path segment, never more path.
        (
            lambda c: [v.version for v in c.versions("../runs")],
            "GET",
            "http://registry.test/v1/models/..%2Fruns/versions",
            None,
            "versions",
            [2],
        ),
    ],
)
def test_each_method_calls_its_service(call: Any, method: str, url: str, body: Any, answer: str, expected: Any) -> None:
    recorder = Recorder(body=ANSWERS[answer])
    with recorder.client() as client:
        assert call(client) == expected
    (request,) = recorder.requests
    assert (request.method, str(request.url)) == (method, url)
    assert request.headers["authorization"] == "Bearer tok"
    assert (json.loads(request.content) if request.content else None) == body


def test_an_idempotency_key_is_sent_as_its_header() -> None:
    recorder = Recorder(body={**ANSWERS["ingest"], "replayed": True, "idempotency_key": "batch-7"})
    with recorder.client() as client:
        answer = client.ingest("tx", [], idempotency_key="batch-7")
    assert recorder.requests[0].headers["idempotency-key"] == "batch-7"
    assert answer.replayed and answer.idempotency_key == "batch-7"


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


# --- the answers, typed ---------------------------------------------------------------------------------------


def test_an_answer_is_typed_and_a_field_the_client_does_not_know_is_ignored_but_kept_raw() -> None:
    newer = {**VERSION, "version": "2", "explainer_uri": "file:///shap.json", "tags": {"owner": "risk"}}
    recorder = Recorder(body=newer)
    with recorder.client() as client:
        version = client.version("m", 2)
    assert isinstance(version, ModelVersion)
    assert version.version == 2 and version.metrics == {"roc_auc": 0.81} and version.aliases == ["champion"]
    assert version.created_at == datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    assert not hasattr(version, "explainer_uri")
    assert version.raw == newer  # the answer as it came, the unknown field included
    with pytest.raises(ValidationError):
        version.status = "archived"  # type: ignore[misc]


def test_nested_answers_are_typed_and_keep_their_raw_json() -> None:
    alias = {
        "model": "m",
        "alias": "champion",
        "version": 2,
        "moved_by": "admin",
        "reason": "better",
        "event_id": "e1",
        "updated_at": "2026-12-03T10:00:00+00:00",
        "model_version": {**VERSION, "future": 1},
    }
    with Recorder(body=alias).client() as client:
        found = client.alias("m", "champion")
    assert found.model_version is not None and found.model_version.artifact_sha256 == "ab" * 32
    assert found.model_version.raw["future"] == 1


def test_list_answers_are_lists_of_typed_items() -> None:
    with Recorder(body={"runs": [RUN, {**RUN, "run_id": "run-2", "metrics": {}}]}).client() as client:
        runs = client.runs()
    assert [type(r) for r in runs] == [Run, Run]
    assert runs[0].created_at == datetime(2026, 12, 3, 10, 0, 0, 123456)
    assert runs[0].params == {"num_leaves": 15} and runs[1].metrics == {}
    assert runs[0].raw == RUN


def test_served_answers_one_model_or_all() -> None:
    one = {
        "model": "m",
        "version": 2,
        "sha256": "ab" * 32,
        "artifact_uri": "file:///m.zip",
        "loaded_at": "2026-12-03T10:00:00+00:00",
        "load_seconds": 0.2,
        "promoted_event_id": "e1",
        "feature_names": ["amount"],
        "rollout": {"mode": "canary", "challenger_version": 3, "step": 1, "share": 0.25, "stats": {}},
        "replica": "r1",
        "last_refused": {"version": 3, "sha256": "cd" * 32, "reason": "sha256 mismatch", "at": "2026-12-03T10:01:00Z"},
    }
    with Recorder(body=one).client() as client:
        served = client.served("m")
    assert isinstance(served, Served) and served.rollout is not None and served.rollout.share == 0.25
    assert served.last_refused is not None and served.last_refused.reason == "sha256 mismatch"
    with Recorder(body={"replica": "r1", "models": [one]}).client() as client:
        every = client.served()
    assert isinstance(every, ServedModels) and [s.version for s in every.models] == [2]


def test_a_schema_field_is_read_under_its_wire_name() -> None:
    with Recorder(body=ANSWERS["schema"]).client() as client:
        contract = client.stream_schema("tx")
    assert contract.avro_schema == {"type": "record", "name": "tx", "fields": []}
    assert contract.model_dump(mode="json", by_alias=True)["schema"] == contract.avro_schema


@pytest.mark.parametrize(
    ("call", "body"),
    [
        (lambda c: c.version("m", 2), {**VERSION, "version": "two"}),  # a field of the wrong type
        (lambda c: c.predict("m", [{"x": 1}]), {"model": "m", "version": 2}),  # required fields missing
        (lambda c: c.runs(), {"items": []}),  # the list is not where the client reads it
        (lambda c: c.models(), ["not", "an", "object"]),
    ],
)
def test_an_answer_the_client_cannot_read_raises_from_the_exception_tree(call: Any, body: Any) -> None:
    with Recorder(body=body).client() as client, pytest.raises(ServiceError) as caught:
        call(client)
    assert caught.value.code == "unexpected_answer" and caught.value.http_status == 502
    assert "cannot read" in str(caught.value)


def test_the_timeline_reads_the_dashboards_cascades() -> None:
    from driftloop.runtime.timeline import Step
    from driftloop.services.dashboard.handlers import Cascade as DashboardCascade

    at = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    steps = [
        Step("e1", "DriftDetected", at, None, "c1", "monitor", "drift on amount", {}),
        Step("e2", "TrainingRequested", at, "e1", "c1", "triggers", "retrain", {}),
    ]
    answer = {
        "model": "m",
        "cascades": [DashboardCascade("c1", steps, ["drift, then a retrain"], "promoted v2").to_dict()],
    }
    with Recorder(body=answer).client() as client:
        (cascade,) = client.timeline("m")
    assert (cascade.cascade_id, cascade.root_event_type, cascade.outcome) == ("c1", "DriftDetected", "promoted v2")
    assert [(s.event_id, s.caused_by, s.occurred_at) for s in cascade.steps] == [("e1", None, at), ("e2", "e1", at)]
