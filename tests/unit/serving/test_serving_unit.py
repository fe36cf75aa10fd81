"""Serving without Kafka: the loader (verify, swap, refuse, coalesce) and the predict API (404/503/422/200) on a
real local object store and real LightGBM artifacts; published events are recorded."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from model_factory import feature_frame, make_pipeline, put_artifact, raw_transactions, train_artifact
from pydantic import ValidationError

from driftloop.clients.objectstore import LocalObjectStore
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.featuredefs import features_from_instances
from driftloop.contracts.payloads import ModelPromoted
from driftloop.runtime.service import base_app
from driftloop.services.serving import api
from driftloop.services.serving.api import PredictRequest, parse_predict_request
from driftloop.services.serving.loader import PromotionFollower
from driftloop.services.serving.served import ModelTable

MODEL = "fraud-serve-unit"


@pytest.fixture(scope="module")
def models() -> dict:
    pipeline = make_pipeline(model=MODEL, stream="tx-serve-unit")
    features = feature_frame(pipeline, rows=1500)
    return {
        "pipeline": pipeline,
        "v1": train_artifact(pipeline, features, rounds=5),
        "v2": train_artifact(pipeline, features, rounds=40),
    }


@pytest.fixture
def env(tmp_path: Path, models: dict) -> SimpleNamespace:
    store = LocalObjectStore(tmp_path / "objects")
    published: list[Event] = []
    table = ModelTable()
    follower = PromotionFollower(table, store, {MODEL: models["pipeline"]}, published.append, "replica-a")
    app = base_app(SimpleNamespace(name="serving-test"), "serving-test")  # type: ignore[arg-type]
    app.state.context = api.Context(table, {MODEL: models["pipeline"]}, published.append, "replica-a")
    app.include_router(api.router)
    api.install_data_plane(app)  # as the service does: the predict/infer shortcuts answer
    plain = base_app(SimpleNamespace(name="serving-test"), "serving-test")  # type: ignore[arg-type]
    plain.state.context = app.state.context
    plain.include_router(api.router)  # the documented routes only
    return SimpleNamespace(
        store=store,
        published=published,
        table=table,
        follower=follower,
        client=TestClient(app),
        plain=TestClient(plain),
    )


def promotion(env: SimpleNamespace, models: dict, version: int, *, tamper: bool = False) -> Event:
    uri, sha = put_artifact(env.store, MODEL, f"run-{version}", models[f"v{version}"])
    if tamper:
        key = env.store.key_of(uri)
        env.store.put_bytes(key, env.store.get_bytes(key)[:-10] + b"0123456789")
    payload = ModelPromoted(
        model=MODEL,
        version=version,
        alias="champion",
        previous_version=None,
        artifact_uri=uri,
        artifact_sha256=sha,
        dataset_version_id="tx@v1",
        feature_set_uri="file:///unused",
        reason="test",
        gate_json="{}",
    )
    return new_event(payload, producer="registry")


def drain(follower: PromotionFollower) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=follower.run, args=(stop,))
    thread.start()
    try:
        deadline = 200
        while not follower.idle() and deadline:
            threading.Event().wait(0.05)
            deadline -= 1
    finally:
        stop.set()
        thread.join()
    assert follower.idle()


def instances(n: int = 3) -> list[dict]:
    raw = raw_transactions(n, seed=5)
    raw["event_time"] = raw["event_time"].astype(str)
    return raw.drop(columns=["is_fraud"]).to_dict(orient="records")


def test_promotion_is_loaded_swapped_and_announced(env: SimpleNamespace, models: dict) -> None:
    event = promotion(env, models, 1)
    env.follower.on_model_promoted(event)
    drain(env.follower)

    served = env.table.get(MODEL)
    assert served is not None and served.version == 1 and served.sha256 == event.payload.artifact_sha256
    (switched,) = env.published
    assert switched.type == "ServingSwitched"
    assert switched.envelope.caused_by == event.id
    assert switched.payload.replica == "replica-a" and switched.payload.previous_version is None
    assert switched.payload.load_seconds >= 0


def test_tampered_artifact_is_refused_and_old_model_keeps_serving(env: SimpleNamespace, models: dict) -> None:
    env.follower.on_model_promoted(promotion(env, models, 1))
    drain(env.follower)
    env.follower.on_model_promoted(promotion(env, models, 2, tamper=True))
    drain(env.follower)

    assert env.table.get(MODEL).version == 1
    problem = env.table.problem(MODEL)
    assert problem is not None and problem.version == 2 and "sha256" in problem.reason
    assert [e.type for e in env.published] == ["ServingSwitched"]
    body = env.client.get(f"/v1/models/{MODEL}").json()
    assert body["version"] == 1 and body["last_refused"]["version"] == 2


def test_queued_promotions_are_coalesced_to_the_newest(env: SimpleNamespace, models: dict) -> None:
    env.follower.on_model_promoted(promotion(env, models, 1))
    env.follower.on_model_promoted(promotion(env, models, 2))
    drain(env.follower)
    assert env.table.get(MODEL).version == 2
    assert [e.payload.version for e in env.published] == [2]


def test_newest_refused_falls_back_to_an_older_queued_promotion(env: SimpleNamespace, models: dict) -> None:
    env.follower.on_model_promoted(promotion(env, models, 1))
    env.follower.on_model_promoted(promotion(env, models, 2, tamper=True))
    drain(env.follower)
    assert env.table.get(MODEL).version == 1


def test_redelivered_promotion_of_the_served_version_is_not_reloaded(env: SimpleNamespace, models: dict) -> None:
    event = promotion(env, models, 1)
    env.follower.on_model_promoted(event)
    drain(env.follower)
    env.follower.on_model_promoted(event)
    drain(env.follower)
    assert len(env.published) == 1


def test_promotion_of_a_model_without_pipeline_is_ignored(env: SimpleNamespace, models: dict) -> None:
    event = promotion(env, models, 1)
    env.follower.on_model_promoted(replace(event, payload=replace(event.payload, model="other")))
    assert env.follower.idle()


def test_predict_returns_version_and_logs_each_row(env: SimpleNamespace, models: dict) -> None:
    env.follower.on_model_promoted(promotion(env, models, 1))
    drain(env.follower)
    env.published.clear()
    rows = instances(3)
    response = env.client.post(f"/v1/models/{MODEL}/predict", json={"instances": rows})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == MODEL and body["version"] == 1 and body["request_id"]
    assert len(body["predictions"]) == 3 and all(0 <= p <= 1 for p in body["predictions"])
    expected = models["v1"].predict(features_from_instances(rows, models["pipeline"]))
    assert body["predictions"] == pytest.approx(list(expected))
    env.client.app.state.context.prediction_log.flush()  # answered rows are logged by a background loop
    logged = env.published
    assert [e.payload.index for e in logged] == [0, 1, 2]
    assert {e.payload.request_id for e in logged} == {body["request_id"]}
    assert logged[0].payload.entity == rows[0]["customer_id"]
    assert logged[0].payload.inputs["amount"] == rows[0]["amount"]
    assert logged[1].payload.prediction == body["predictions"][1]


def test_unknown_model_is_404(env: SimpleNamespace) -> None:
    response = env.client.post("/v1/models/nope/predict", json={"instances": instances(1)})
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]


def test_no_model_loaded_is_503_with_a_message(env: SimpleNamespace) -> None:
    response = env.client.post(f"/v1/models/{MODEL}/predict", json={"instances": instances(1)})
    assert response.status_code == 503
    assert "no version loaded" in response.json()["detail"]
    assert env.client.get(f"/v1/models/{MODEL}").status_code == 503


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"instances": []}, "instances"),
        ({"rows": []}, "instances"),
        ({"instances": [1, 2]}, "instances"),
        ({"instances": "x"}, "instances"),
    ],
)
def test_malformed_request_body_is_422_naming_the_field(env: SimpleNamespace, models: dict, body: dict, field: str):
    env.follower.on_model_promoted(promotion(env, models, 1))
    drain(env.follower)
    response = env.client.post(f"/v1/models/{MODEL}/predict", json=body)
    assert response.status_code == 422
    assert field in response.text


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        ({"amount": "lots"}, "wrong_type", "amount"),
        ({"amount": True}, "wrong_type", "amount"),
        ({"hour": {"h": 3}}, "not_a_scalar", "hour"),
        ({"age": 2**70}, "out_of_range", "age"),
        ({"amount": None, "drop": "merchant_category"}, "missing_field", "merchant_category"),
    ],
)
def test_bad_instance_values_are_422_with_reason_and_field(
    env: SimpleNamespace, models: dict, change: dict, reason: str, field: str
) -> None:
    env.follower.on_model_promoted(promotion(env, models, 1))
    drain(env.follower)
    env.published.clear()
    row = instances(1)[0]
    drop = change.pop("drop", None)
    row.update(change)
    if drop:
        row.pop(drop)
    response = env.client.post(f"/v1/models/{MODEL}/predict", json={"instances": [instances(1)[0], row]})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail["reason"] == reason and detail["field"] == field
    assert "instances[1]" in detail["message"]
    env.client.app.state.context.prediction_log.flush()
    assert env.published == []  # nothing logged for a refused request


def test_the_data_plane_shortcut_answers_exactly_as_the_documented_routes(env: SimpleNamespace, models: dict) -> None:
    env.follower.on_model_promoted(promotion(env, models, 1))
    drain(env.follower)
    good = {"instances": instances(2)}
    bad_value = {"instances": [{**instances(1)[0], "amount": "lots"}]}
    tensors = [{"name": "amount", "datatype": "FP64", "shape": [1], "data": [1.0]}]
    cases = [
        ("/v1/models/{m}/predict", good),
        ("/v1/models/{m}/predict", bad_value),
        ("/v1/models/{m}/predict", {"rows": []}),
        ("/v1/models/nope/predict", good),
        ("/v2/models/{m}/infer", {"inputs": tensors}),
        ("/v2/models/nope/infer", {"inputs": tensors}),
    ]
    for path, body in cases:
        url = path.format(m=MODEL)
        fast, plain = env.client.post(url, json=body), env.plain.post(url, json=body)
        assert fast.status_code == plain.status_code, url
        fast_body, plain_body = fast.json(), plain.json()
        if fast.status_code == 200:
            assert fast_body["predictions"] == plain_body["predictions"]
            assert fast_body.keys() == plain_body.keys()
        else:
            assert fast_body == plain_body, (url, body)
    not_json = env.client.post(f"/v1/models/{MODEL}/predict", content=b"{nope")
    assert not_json.status_code == 422 == env.plain.post(f"/v1/models/{MODEL}/predict", content=b"{nope").status_code
    metrics = env.client.get("/metrics").text
    assert 'route="/v1/models/{name}/predict"' in metrics  # the shortcut's requests carry the route template


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [{"amount": 1.5, "age": 30, "x": null, "s": "a", "b": true}]}',
        b'{"instances": [{"a": NaN}, {"a": 1e400}, {"a": 123456789012345678901234567890}]}',
        b'{"instances": [{"a": 1}], "instances": [{"b": 2}]}',
        b'{"entities": ["c1", "c2"]}',
    ],
)
def test_a_body_of_instances_is_read_as_the_model_reads_it(body: bytes) -> None:
    fast = parse_predict_request(body)
    model = PredictRequest.model_validate_json(body)
    assert (repr(fast.instances), fast.entities) == (repr(model.instances), model.entities)  # repr: NaN != NaN


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": []}',
        b'{"instances": [1, 2]}',
        b'{"instances": [{"a": 1}], "extra": 1}',
        b'{"instances": [{"a": 1}], "entities": ["c"]}',
        b'{"instances": {"a": 1}}',
        b"[]",
        b'{"instances": [{"a": "\\ud800"}]}',
        b"not json",
    ],
)
def test_other_bodies_get_the_models_422(body: bytes) -> None:
    with pytest.raises(RequestValidationError) as fast:
        parse_predict_request(body)
    with pytest.raises(ValidationError) as model:
        PredictRequest.model_validate_json(body)
    assert [e["type"] for e in fast.value.errors()] == [e["type"] for e in model.value.errors()]
