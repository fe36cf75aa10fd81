"""Serving in depth on the real broker, schema registry, SQLite and object store: a canary promoted by the
registry and rolled back by serving itself (events in the event log, same cascade as the promotion); feedback
joined to predictions; the Open Inference Protocol v2 over real HTTP with a plain client (urllib) following the
spec; entity keys resolved through the real features service's online store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from model_factory import write_pipeline_dir
from pipeline_support import collect_events, wait_for
from serving_support import HttpServer, Stack, http, rows

from driftloop.clients.db.models import OnlineFeatures, PredictionFeedback, ServedPrediction
from driftloop.contracts.settings import Settings
from driftloop.contracts.topics import PREDICTION_LOGGED
from driftloop.ops.procs import free_port
from driftloop.services.features.service import build as build_features

pytestmark = pytest.mark.integration


def test_registry_promotes_serving_canaries_and_rolls_back_by_itself_then_feedback_joins(canary_stack: Stack) -> None:
    stack = canary_stack
    stack.complete_training("run-1", rounds=1)
    assert stack.decided(1)["status"] == "promoted"
    wait_for(lambda: stack.served_version() == 1, "serving to load v1")

    stack.complete_training("run-2", rounds=30)  # better offline: promoted; its predictions differ online
    assert stack.decided(2)["status"] == "promoted"
    rollout = wait_for(lambda: stack.serving.client.get(f"/v1/models/{stack.model}").json()["rollout"], "a rollout")
    assert (rollout["mode"], rollout["challenger_version"], rollout["share"]) == ("canary", 2, 0.5)

    answers = []
    for i in range(20):
        batch = [{**row, "customer_id": f"c{i}-{j}"} for j, row in enumerate(rows(1) if i % 2 else rows(2))]
        response = stack.predict(batch)
        assert response.status_code == 200, response.text
        answers.append(response.json())
    assert {a["version"] for a in answers} == {1, 2}  # both arms answered before the verdict
    assert stack.served_version() == 1
    assert stack.serving.client.get(f"/v1/models/{stack.model}").json()["rollout"] is None

    (rolled_back,) = wait_for(lambda: stack.events("RolloutRolledBack"), "RolloutRolledBack in the event log")
    (started,) = stack.events("RolloutStepped")
    # The registry then moves champion back to v1 (a later ModelPromoted): v2's promotion is the gate's.
    (promoted_v2,) = [e for e in stack.events("ModelPromoted") if e.payload["version"] == 2]
    assert started.payload["action"] == "started" and started.caused_by == promoted_v2.event_id
    assert rolled_back.caused_by == promoted_v2.event_id and rolled_back.cascade_id == promoted_v2.cascade_id
    assert rolled_back.payload["version"] == 2 and "mean prediction" in rolled_back.payload["reason"]
    assert [e.payload["version"] for e in stack.events("ServingSwitched")] == [1]  # v2 never fully served

    # Feedback: by request id + row, and by entity (its newest prediction).
    first = answers[0]  # two rows
    entity = "c19-0"
    response = stack.serving.client.post(
        f"/v1/models/{stack.model}/feedback",
        json={
            "feedback": [
                {"request_id": first["request_id"], "index": 1, "actual": 1},
                {"entity": entity, "actual": 0, "at": datetime.now(tz=UTC).isoformat()},
            ]
        },
    )
    assert response.status_code == 200, response.text
    accepted = response.json()["feedback"]
    assert accepted[0]["prediction"] == pytest.approx(first["predictions"][1])
    assert accepted[1]["request_id"] == answers[-1]["request_id"]  # the entity's newest prediction (odd i: 1 row)
    joined = stack.serving.client.get(f"/v1/models/{stack.model}/feedback").json()["rows"]
    assert {(r["request_id"], r["index"], r["actual"]) for r in joined} == {
        (first["request_id"], 1, 1.0),
        (answers[-1]["request_id"], 0, 0.0),
    }
    received = wait_for(lambda: (e := stack.events("FeedbackReceived")) and len(e) == 2 and e, "FeedbackReceived")
    assert {(e.payload["request_id"], e.payload["index"]) for e in received} == {
        (first["request_id"], 1),
        (answers[-1]["request_id"], 0),
    }
    with stack.serving.runtime.Session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(PredictionFeedback)) == 2
        stored = session.scalar(sa.select(sa.func.count()).select_from(ServedPrediction))
    assert stored == sum(len(a["predictions"]) for a in answers)

    # Unknown rows are refused whole, naming the row; bad bodies name the field.
    unknown = stack.serving.client.post(
        f"/v1/models/{stack.model}/feedback",
        json={"feedback": [{"request_id": first["request_id"], "actual": 1}, {"request_id": "nope", "actual": 0}]},
    )
    assert unknown.status_code == 404 and "feedback[1]" in unknown.text
    both = stack.serving.client.post(
        f"/v1/models/{stack.model}/feedback", json={"feedback": [{"request_id": "x", "entity": "y", "actual": 1}]}
    )
    assert both.status_code == 422 and "request_id" in both.text


def test_open_inference_protocol_over_http_and_entity_keys_through_the_online_store(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str
) -> None:
    model, stream = f"fraud-{unique}", f"tx-{unique}"
    pipelines = write_pipeline_dir(tmp_path / "pipelines", model, stream, first_version_threshold=0.6)
    features_port = free_port()
    settings = make_settings(pipelines_dir=pipelines, services={"features_port": features_port})
    stack = Stack(settings, model, stream)
    features = stack.start("features", build_features)
    servers = [HttpServer(features.spec.app, features_port), HttpServer(stack.serving.spec.app, free_port())]
    base = servers[1].url
    try:
        assert http("GET", f"{base}/v2/health/live") == (200, {"live": True})
        assert http("GET", f"{base}/v2/health/ready")[0] == 503  # nothing loaded yet
        assert http("GET", f"{base}/v2/models/{model}/ready") == (503, {"name": model, "ready": False})

        stack.complete_training("run-1", rounds=30)
        assert stack.decided(1)["status"] == "promoted"
        wait_for(lambda: http("GET", f"{base}/v2/models/{model}/ready")[0] == 200, "the model to be ready")
        assert http("GET", f"{base}/v2/health/ready") == (200, {"ready": True})

        status, meta = http("GET", f"{base}/v2/models/{model}")
        assert status == 200 and meta["name"] == model and meta["versions"] == ["1"]
        inputs = {t["name"]: t for t in meta["inputs"]}
        assert inputs["amount"]["datatype"] == "FP64" and inputs["merchant_category"]["datatype"] == "BYTES"
        assert "is_fraud" not in inputs and meta["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]

        raw = rows(3)
        tensors = [
            {"name": "customer_id", "datatype": "BYTES", "shape": [3], "data": [r["customer_id"] for r in raw]},
            {"name": "event_time", "datatype": "BYTES", "shape": [3], "data": [r["event_time"] for r in raw]},
            {"name": "amount", "datatype": "FP64", "shape": [3, 1], "data": [[r["amount"]] for r in raw]},
            {"name": "age", "datatype": "INT32", "shape": [3], "data": [r["age"] for r in raw]},
            {"name": "hour", "datatype": "INT64", "shape": [3], "data": [r["hour"] for r in raw]},
            {
                "name": "merchant_category",
                "datatype": "BYTES",
                "shape": [3],
                "data": [r["merchant_category"] for r in raw],
            },
        ]
        status, body = http("POST", f"{base}/v2/models/{model}/infer", {"id": "req-1", "inputs": tensors})
        assert status == 200, body
        assert body["model_name"] == model and body["model_version"] == "1" and body["id"] == "req-1"
        (output,) = body["outputs"]
        assert output["name"] == "predict" and output["datatype"] == "FP64" and output["shape"] == [3]
        v1 = stack.predict(raw).json()
        assert output["data"] == pytest.approx(v1["predictions"], abs=1e-12)  # the same model as /v1

        # Inputs checked against the signature: 422 with the reason and the field, never a 500.
        bad_cases = [
            ([{**tensors[2], "datatype": "BYTES"}, *tensors[3:]], "wrong_datatype", "amount"),
            ([*tensors[:2], {**tensors[2], "shape": [2]}, *tensors[3:]], "shape_mismatch", "amount"),
            ([t for t in tensors if t["name"] != "hour"], "missing_input", "hour"),
            (
                [*tensors, {"name": "is_fraud", "datatype": "INT64", "shape": [3], "data": [0, 0, 1]}],
                "unknown_input",
                "is_fraud",
            ),
            ([*tensors[:4], {**tensors[4], "data": ["x", 1, 2]}, tensors[5]], "wrong_type", "hour"),
        ]
        for inputs_, reason, field in bad_cases:
            status, body = http("POST", f"{base}/v2/models/{model}/infer", {"inputs": inputs_})
            assert (status, body.get("reason"), body.get("field")) == (422, reason, field), body
            assert body["error"]
        assert http("POST", f"{base}/v2/models/nobody/infer", {"inputs": tensors})[0] == 404

        # Entity keys: features from the online store (as materialization writes them), same answer as inline.
        entities = [f"ent-a-{unique}", f"ent-b-{unique}"]
        computed = stack.features[stack.pipeline.feature_names].iloc[:2]
        with features.runtime.Session() as session, session.begin():
            for entity, (_, values) in zip(entities, computed.iterrows(), strict=True):
                session.add(
                    OnlineFeatures(
                        stream=stream,
                        entity=entity,
                        values={k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()},
                        event_time=datetime.now(tz=UTC),
                    )
                )
        status, by_entity = http("POST", f"{base}/v1/models/{model}/predict", {"entities": entities})
        assert status == 200, by_entity
        direct = stack.serving.spec.app.state.model_table.get(model).artifact.predict(computed.reset_index(drop=True))
        assert by_entity["predictions"] == pytest.approx(list(direct), abs=1e-12)
        status, missing = http("POST", f"{base}/v1/models/{model}/predict", {"entities": [entities[0], "nobody"]})
        assert status == 422 and missing["detail"]["reason"] == "unknown_entity" and "nobody" in str(missing)
        logged = collect_events(
            stack.serving.runtime.bus,
            PREDICTION_LOGGED.name,
            lambda e: e.payload.request_id == by_entity["request_id"],
            count=len(entities),
        )
        assert sorted(e.payload.entity for e in logged) == sorted(entities)
    finally:
        for server in reversed(servers):
            server.stop()
        stack.stop()
