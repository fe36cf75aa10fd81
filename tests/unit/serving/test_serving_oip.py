"""The Open Inference Protocol (KServe v2, REST), tested as its specification reads, with no knowledge of driftloop:
model and version metadata, version readiness (200 = ready, 4xx = not), inference on a named version (the champion
or a canary's challenger), a single ``[N, F]`` input tensor, integral FP64 values for integer features,
``parameters`` on the request, its inputs and outputs, the requested ``outputs``, the response's fields, and
``{"error": ...}`` bodies."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from driftloop.client import Client
from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.featuredefs import features_from_instances
from driftloop.contracts.oip import required_fields, signature
from driftloop.contracts.payloads import ModelPromoted
from driftloop.contracts.pipeline import RolloutSpec, parse_pipeline
from driftloop.ops.export import signature as export_signature
from driftloop.runtime.service import base_app
from driftloop.services.serving import api
from driftloop.services.serving.rollout import RolloutController
from driftloop.services.serving.served import ModelTable, ServedModel

MODEL = "oip-spec"
PIPELINE = f"""
stream:
  name: oip-spec
  fields:
    - {{name: id, type: string}}
    - {{name: ts, type: timestamp}}
    - {{name: f0, type: double, nullable: false}}
    - {{name: f1, type: double, nullable: false}}
    - {{name: f2, type: double, nullable: false}}
    - {{name: n, type: int, nullable: false}}
    - {{name: y, type: int}}
  entity_key: id
  event_time: ts
  label: y
features:
  - {{name: f0}}
  - {{name: f1}}
  - {{name: f2}}
  - {{name: n}}
model:
  name: {MODEL}
  family: lightgbm
"""
REQUIRED = ["f0", "f1", "f2", "n"]  # the signature's required inputs, in its order
ROWS = [[0.5, -1.25, 2.0, 3], [1.5, 0.25, -0.5, 7], [-2.0, 1.0, 0.0, 0]]


def artifact(rounds: int) -> ModelArtifact:
    rng = np.random.default_rng(rounds)
    x = pd.DataFrame(rng.normal(size=(500, 4)), columns=REQUIRED)
    x["n"] = rng.integers(0, 10, 500).astype(float)
    y = (x["f0"] + x["n"] / 5 + rng.normal(size=500) > 1).astype(int)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1}, lgb.Dataset(x, y), rounds)
    return ModelArtifact(family="lightgbm", task="classification", feature_names=REQUIRED, categories={}, model=booster)


def served(version: int, rounds: int) -> ServedModel:
    pipeline = parse_pipeline(PIPELINE)
    return ServedModel(MODEL, version, f"sha-{version}", "file:///x", artifact(rounds), pipeline, datetime.now(tz=UTC),
                       0.0, f"promoted-{version}")  # fmt: skip


@pytest.fixture
def env() -> SimpleNamespace:
    published: list[Event] = []
    table = ModelTable()
    table.swap(served(1, 20))
    rollouts = RolloutController(table, published.append, "replica-a")
    app = base_app(SimpleNamespace(name="serving-oip"), "serving-oip")  # type: ignore[arg-type]
    app.state.context = api.Context(table, {MODEL: parse_pipeline(PIPELINE)}, published.append, "replica-a",
                                    rollouts=rollouts)  # fmt: skip
    app.include_router(api.router)
    return SimpleNamespace(client=TestClient(app), table=table, rollouts=rollouts, published=published, app=app)


def start_canary(env: SimpleNamespace) -> None:
    promoted = new_event(
        ModelPromoted(model=MODEL, version=2, alias="champion", previous_version=1, artifact_uri="file:///x",
                      artifact_sha256="sha-2", dataset_version_id="d@v1", feature_set_uri="file:///f", reason="t",
                      gate_json="{}"),
        producer="registry",
    )  # fmt: skip
    spec = RolloutSpec(mode="canary", canary_steps=[0.5], step_min_requests=10_000)
    env.rollouts.start(env.table.get(MODEL), served(2, 60), spec, promoted)


def columnar(rows: list[list[float]], n_datatype: str = "INT64") -> list[dict[str, Any]]:
    return [
        {"name": name, "datatype": n_datatype if name == "n" else "FP64", "shape": [len(rows)],
         "data": [r[j] for r in rows]}
        for j, name in enumerate(REQUIRED)
    ]  # fmt: skip


def infer(env: SimpleNamespace, body: dict[str, Any], version: str | None = None) -> tuple[int, dict[str, Any]]:
    path = f"/v2/models/{MODEL}" + (f"/versions/{version}" if version else "") + "/infer"
    response = env.client.post(path, json=body)
    return response.status_code, response.json()


def test_model_and_version_metadata(env: SimpleNamespace) -> None:
    response = env.client.get(f"/v2/models/{MODEL}")
    assert response.status_code == 200
    meta = response.json()
    assert meta["name"] == MODEL and meta["versions"] == ["1"] and meta["platform"] == "lightgbm"
    assert [t["name"] for t in meta["inputs"]] == ["id", "ts", *REQUIRED]  # the signature's order
    assert {t["name"]: t["datatype"] for t in meta["inputs"]}["n"] == "INT32"
    assert all(t["shape"] == [-1] for t in meta["inputs"])
    assert meta["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]

    version = env.client.get(f"/v2/models/{MODEL}/versions/1")
    assert version.status_code == 200 and version.json()["versions"] == ["1"]
    missing = env.client.get(f"/v2/models/{MODEL}/versions/9")
    assert missing.status_code == 404 and "not loaded" in missing.json()["error"]
    assert env.client.get("/v2/models/nobody/versions/1").status_code == 404


def test_version_ready_is_200_when_loaded_and_4xx_when_not(env: SimpleNamespace) -> None:
    ready = env.client.get(f"/v2/models/{MODEL}/versions/1/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    not_ready = env.client.get(f"/v2/models/{MODEL}/versions/2/ready")
    assert 400 <= not_ready.status_code < 500 and "error" in not_ready.json()


def test_inference_response_fields_and_a_named_version(env: SimpleNamespace) -> None:
    status, body = infer(env, {"id": "my-request", "inputs": columnar(ROWS)})
    assert status == 200, body
    assert body["model_name"] == MODEL and body["model_version"] == "1" and body["id"] == "my-request"
    assert isinstance(body.get("parameters", {}), dict)
    (output,) = body["outputs"]
    assert output["name"] == "predict" and output["datatype"] == "FP64" and output["shape"] == [3]
    assert len(output["data"]) == 3 and all(0 <= p <= 1 for p in output["data"])

    status, pinned = infer(env, {"inputs": columnar(ROWS)}, version="1")
    assert status == 200 and pinned["model_version"] == "1"
    assert pinned["outputs"][0]["data"] == output["data"]
    status, error = infer(env, {"inputs": columnar(ROWS)}, version="2")
    assert status == 404 and "version" in error["error"]


def test_a_canarys_challenger_is_a_version_a_client_can_name(env: SimpleNamespace) -> None:
    start_canary(env)
    assert env.client.get(f"/v2/models/{MODEL}").json()["versions"] == ["1", "2"]
    assert env.client.get(f"/v2/models/{MODEL}/versions/2/ready").status_code == 200
    _, champion = infer(env, {"inputs": columnar(ROWS)}, version="1")
    status, challenger = infer(env, {"inputs": columnar(ROWS)}, version="2")
    assert status == 200 and challenger["model_version"] == "2"
    assert challenger["outputs"][0]["data"] != champion["outputs"][0]["data"]  # another model answered
    env.app.state.context.prediction_log.flush()
    logged = [e.payload for e in env.published if e.type == "PredictionLogged"]
    assert sorted({p.version for p in logged}) == [1, 2] and len(logged) == 6


def test_one_n_by_f_tensor_in_the_signatures_order(env: SimpleNamespace) -> None:
    _, expected = infer(env, {"inputs": columnar(ROWS)})
    nested = {"name": "input-0", "datatype": "FP64", "shape": [3, 4], "data": [[float(v) for v in r] for r in ROWS]}
    status, body = infer(env, {"inputs": [nested]})
    assert status == 200, body
    assert body["outputs"][0]["data"] == expected["outputs"][0]["data"]
    flat = {**nested, "data": [float(v) for r in ROWS for v in r]}  # row-major, as the spec allows
    assert infer(env, {"inputs": [flat]})[1]["outputs"][0]["data"] == expected["outputs"][0]["data"]

    # All six inputs in order: the string fields cannot travel in an FP64 tensor; the error names the field.
    status, error = infer(env, {"inputs": [{**nested, "shape": [3, 6], "data": [[1.0] * 6] * 3}]})
    assert status == 422 and (error["reason"], error["field"]) == ("wrong_datatype", "id")
    status, error = infer(env, {"inputs": [{**nested, "shape": [3, 5], "data": [[1.0] * 5] * 3}]})
    assert status == 422 and error["reason"] == "shape_mismatch" and "f0" in error["error"]


def test_integral_fp64_values_are_accepted_for_integer_features(env: SimpleNamespace) -> None:
    _, expected = infer(env, {"inputs": columnar(ROWS)})
    as_floats = [[float(v) for v in r] for r in ROWS]
    status, body = infer(env, {"inputs": columnar(as_floats, n_datatype="FP64")})
    assert status == 200, body
    assert body["outputs"][0]["data"] == expected["outputs"][0]["data"]
    fractional = [[*r[:3], 3.5] for r in as_floats]
    status, error = infer(env, {"inputs": columnar(fractional, n_datatype="FP64")})
    assert status == 422 and (error["reason"], error["field"]) == ("wrong_type", "n")
    assert "integral" in error["error"]


def test_parameters_and_requested_outputs(env: SimpleNamespace) -> None:
    tensors = columnar(ROWS)
    tensors[0] = {**tensors[0], "parameters": {"content_type": "np"}}
    body = {
        "parameters": {"binary_data_output": False, "priority": 1},
        "inputs": tensors,
        "outputs": [{"name": "predict", "parameters": {"binary_data": False}}],
    }
    status, answer = infer(env, body)
    assert status == 200, answer
    assert [o["name"] for o in answer["outputs"]] == ["predict"]

    for bad in ({**body, "parameters": ["not", "an", "object"]}, {**body, "parameters": {"nested": {"a": 1}}}):
        status, error = infer(env, bad)
        assert status == 422 and error["reason"] == "bad_parameters"
    status, error = infer(env, {**body, "outputs": [{"name": "probabilities"}]})
    assert status == 422 and error["reason"] == "unknown_output"
    status, error = infer(env, {"inputs": "nope"})
    assert status == 422 and error["error"]
    response = env.client.post(f"/v2/models/{MODEL}/infer", content=b"{not json")
    assert response.status_code == 400 and "error" in response.json()


def test_the_public_client_reads_servings_answers_typed(env: SimpleNamespace) -> None:
    """``driftloop.client.Client`` against the real routes (the test app's transport): each answer reads into its
    model with the values the JSON has."""
    start_canary(env)
    with Client(urls={"serving": "http://testserver"}, token="t", transport=env.client._transport) as dl:
        meta = dl.model_metadata(MODEL)
        answer = dl.infer(MODEL, columnar(ROWS), version=1, request_id="mine")
        predicted = dl.predict(MODEL, [dict(zip(REQUIRED, row, strict=True)) for row in ROWS])
        served = dl.served(MODEL)
        every = dl.served()
    assert meta.name == MODEL and [t.name for t in meta.inputs] == ["id", "ts", *REQUIRED]
    assert meta.outputs[0].shape == [-1]
    assert (answer.id, answer.model_version, answer.outputs[0].shape) == ("mine", "1", [3])
    assert answer.outputs[0].data == infer(env, {"inputs": columnar(ROWS)}, version="1")[1]["outputs"][0]["data"]
    assert predicted.model == MODEL and predicted.version in (1, 2) and len(predicted.predictions) == 3
    assert served.version == 1 and served.replica == "replica-a" and isinstance(served.loaded_at, datetime)
    assert served.rollout is not None and (served.rollout.mode, served.rollout.challenger_version) == ("canary", 2)
    assert every.replica == "replica-a" and [s.version for s in every.models] == [1]


def test_an_aggregates_source_field_is_not_required_by_v1_v2_or_the_export() -> None:
    """An aggregate's value comes by name (an online lookup) or is missing: its nullable source field is required
    nowhere, and /v1, /v2 and the export's signature.json follow one rule."""
    text = (Path(__file__).resolve().parents[3] / "pipelines" / "transactions.yaml").read_text()
    text = text.replace("  - {name: age}\n", "  - {name: age_mean_1h, aggregate: mean, source: age, window: 1h}\n")
    cfg = parse_pipeline(text)
    assert "age" not in required_fields(cfg) and "amount" in required_fields(cfg)
    assert not signature(cfg).by_name["age"].required
    row = {"amount": 12.5, "hour": 3, "merchant_category": "grocery"}
    assert np.isnan(features_from_instances([row], cfg)["age_mean_1h"].iloc[0])  # /v1 takes the row without age
    artifact = ModelArtifact(family="lightgbm", task="classification", feature_names=cfg.feature_names, categories={},
                             model=None)  # fmt: skip
    exported = export_signature(artifact, "0" * 64, cfg)
    assert [i["name"] for i in exported["inputs"] if i["required"]] == required_fields(cfg)
