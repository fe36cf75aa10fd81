"""Registry and serving on the real broker, schema registry, SQLite and object store, run in-process (their
consumers and loops in threads, their HTTP apps through TestClient). Models are small real LightGBM models."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from model_factory import (
    feature_frame,
    pipeline_text,
    put_artifact,
    put_feature_set,
    train_artifact,
    training_completed,
    write_pipeline_dir,
)
from pipeline_support import wait_for
from serving_support import Stack, rows

from driftloop.contracts.events import new_event
from driftloop.contracts.payloads import ModelPromoted
from driftloop.contracts.pipeline import parse_pipeline
from driftloop.contracts.settings import Settings
from driftloop.ops.pipelines import apply_pipeline
from driftloop.services.monitor.service import build as build_monitor
from driftloop.services.serving.service import build as build_serving

pytestmark = pytest.mark.integration


def test_register_promote_serve_then_reject_worse_and_promote_better(stack: Stack) -> None:
    assert stack.predict(rows()).status_code == 503  # up, but nothing promoted yet
    assert stack.serving.client.get("/healthz").json()["models_loaded"] == 0

    stack.complete_training("run-1", rounds=1)
    v1 = stack.decided(1)
    assert v1["status"] == "promoted" and v1["aliases"] == ["champion"]
    assert v1["gate"]["decision"] == "promoted" and v1["gate"]["challenger_score"] >= 0.6
    assert v1["lineage"]["run_id"] == "run-1" and v1["lineage"]["cascade_id"]
    wait_for(lambda: stack.served_version() == 1, "serving to load v1")
    response = stack.predict(rows())
    assert response.status_code == 200 and response.json()["version"] == 1
    assert stack.serving.client.get("/healthz").json()["models_loaded"] == 1

    stack.complete_training("run-2", quality="bad")
    v2 = stack.decided(2)
    assert v2["status"] == "rejected"
    assert v2["gate"]["challenger_score"] < v2["gate"]["champion_score"]
    assert stack.registry.client.get(f"/v1/models/{stack.model}/aliases/champion").json()["version"] == 1

    stack.complete_training("run-3", rounds=30)
    v3 = stack.decided(3)
    assert v3["status"] == "promoted", v3["gate"]
    assert v3["gate"]["champion_version"] == 1 and v3["gate"]["margin"] >= 0.01
    wait_for(lambda: stack.served_version() == 3, "serving to switch to v3")
    assert stack.predict(rows()).json()["version"] == 3

    # The rejected v2 was never served: ServingSwitched went 1 → 3, each caused by its promotion.
    switched = wait_for(lambda: (e := stack.events("ServingSwitched")) and len(e) == 2 and e, "ServingSwitched log")
    assert [e.payload["version"] for e in switched] == [1, 3]
    assert switched[1].payload["previous_version"] == 1
    promoted = stack.events("ModelPromoted")
    assert [e.payload["version"] for e in promoted] == [1, 3]
    assert switched[1].caused_by == promoted[1].event_id
    assert [e.payload["version"] for e in stack.events("ModelRejected")] == [2]
    assert {e.cascade_id for e in stack.events("ModelRegistered")} == {
        stack.decided(v)["lineage"]["cascade_id"] for v in (1, 2, 3)
    }

    # Registry API.
    listed = {m["model"]: m for m in stack.registry.client.get("/v1/models").json()["models"]}
    assert listed[stack.model]["champion_version"] == 3 and listed[stack.model]["versions"] == 3
    versions = stack.registry.client.get(f"/v1/models/{stack.model}/versions").json()
    assert [v["status"] for v in versions["versions"]] == ["promoted", "rejected", "promoted"]
    for path in (
        "/v1/models/nobody/versions",
        f"/v1/models/{stack.model}/versions/99",
        f"/v1/models/{stack.model}/aliases/staging",
        "/v1/models/nobody/aliases/champion",
    ):
        response = stack.registry.client.get(path)
        assert response.status_code == 404, path
        assert response.json()["detail"]

    # A replica started now replays the promotion history and ends on the current champion.
    replica = stack.start("serving", build_serving)
    wait_for(lambda: stack.served_version(replica) == 3, "a new replica to reach v3")
    assert stack.predict(rows(), serving=replica).json()["version"] == 3


def test_hot_swap_under_continuous_requests_fails_no_request(stack: Stack) -> None:
    stack.complete_training("run-1", rounds=1)
    assert stack.decided(1)["status"] == "promoted"
    wait_for(lambda: stack.served_version() == 1, "serving to load v1")

    results: list[tuple[int, int | None]] = []
    stop = threading.Event()
    batch = rows(8)

    def hammer() -> None:
        client = TestClient(stack.serving.spec.app)
        while not stop.is_set() or len([r for r in results if r[1] == 2]) < 20:
            response = client.post(f"/v1/models/{stack.model}/predict", json={"instances": batch})
            results.append((response.status_code, response.json().get("version")))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        wait_for(lambda: len(results) >= 20, "requests on v1")
        stack.complete_training("run-2", rounds=30)
        assert stack.decided(2)["status"] == "promoted"
        wait_for(lambda: stack.served_version() == 2, "the hot swap to v2")
    finally:
        stop.set()
        thread.join(timeout=60)

    assert all(code == 200 for code, _ in results), {code for code, _ in results}
    versions = [v for _, v in results]
    assert versions[0] == 1 and versions[-1] == 2
    first_v2 = versions.index(2)
    assert set(versions[:first_v2]) == {1} and set(versions[first_v2:]) == {2}  # no flapping back


def test_forged_promotion_of_tampered_artifact_is_refused_and_old_model_keeps_serving(stack: Stack) -> None:
    stack.complete_training("run-1")
    v1 = stack.decided(1)
    wait_for(lambda: stack.served_version() == 1, "serving to load v1")

    # A promotion the registry never made (written on the bus directly), of an artifact altered after its sha256
    # was recorded: refused before its artifact is even fetched.
    artifact = train_artifact(stack.pipeline, stack.features, rounds=90)
    uri, sha = put_artifact(stack.store, stack.model, "run-x", artifact)
    key = stack.store.key_of(uri)
    stack.store.put_bytes(key, stack.store.get_bytes(key) + b"\x00tampered")
    payload = ModelPromoted(
        model=stack.model,
        version=2,
        alias="champion",
        previous_version=1,
        artifact_uri=uri,
        artifact_sha256=sha,
        dataset_version_id=f"{stack.stream}@v1",
        feature_set_uri=stack.feature_set_uri,
        reason="test: tampered",
        gate_json="{}",
    )
    stack.serving.runtime.bus.publish(new_event(payload, producer="test"))

    described = wait_for(
        lambda: (d := stack.serving.client.get(f"/v1/models/{stack.model}").json()).get("last_refused") and d,
        "serving to refuse the tampered artifact",
    )
    assert described["version"] == 1 and described["sha256"] == v1["artifact_sha256"]
    assert described["last_refused"]["version"] == 2
    assert "the registry has no version 2" in described["last_refused"]["reason"]
    refused = stack.serving.client.get("/healthz").json()["last_refused"]
    assert refused["version"] == 2 and refused["producer"] == "test"
    response = stack.predict(rows())
    assert response.status_code == 200 and response.json()["version"] == 1
    assert [e.payload["version"] for e in stack.events("ServingSwitched")] == [1]


def test_bad_requests_get_422_naming_the_field_and_unknown_model_404(stack: Stack) -> None:
    stack.complete_training("run-1")
    stack.decided(1)
    wait_for(lambda: stack.served_version() == 1, "serving to load v1")

    missing = rows(1)[0]
    del missing["hour"]
    response = stack.predict([missing])
    assert response.status_code == 422 and response.json()["detail"]["field"] == "hour"

    wrong = {**rows(1)[0], "amount": "twelve"}
    response = stack.predict([wrong])
    assert response.status_code == 422
    assert response.json()["detail"] == {
        "reason": "wrong_type",
        "field": "amount",
        "message": "instances[0].amount must be a number, got 'twelve'",
    }

    response = stack.serving.client.post(f"/v1/models/{stack.model}/predict", json={"instances": []})
    assert response.status_code == 422 and "instances" in response.text

    response = stack.serving.client.post(f"/v1/models/{stack.model}/predict", content=b"{not json")
    assert response.status_code == 422

    response = stack.serving.client.post("/v1/models/nobody/predict", json={"instances": rows(1)})
    assert response.status_code == 404 and "nobody" in response.json()["detail"]


def test_on_postgres_and_s3_tampered_challenger_is_rejected_and_first_version_served(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str, postgres_url: str, s3_endpoint: str
) -> None:
    """The same path on PostgreSQL (row locks, JSON outbox with a NaN score) and S3 (moto): arrow reads the
    feature set, minio fetches artifacts."""
    model, stream = f"fraud-{unique}", f"tx-{unique}"
    pipelines = write_pipeline_dir(tmp_path / "pipelines", model, stream, first_version_threshold=0.6)
    settings = make_settings(
        pipelines_dir=pipelines,
        database={"url": postgres_url},
        object_store={
            "type": "s3",
            "endpoint": s3_endpoint,
            "bucket": f"b-{unique}",
            "access_key": "testing",
            "secret_key": "testing",
        },
    )
    stack = Stack(settings, model, stream)
    try:
        assert stack.feature_set_uri.startswith("s3://")
        stack.complete_training("run-1")
        assert stack.decided(1)["status"] == "promoted"
        wait_for(lambda: stack.served_version() == 1, "serving to load v1 from S3")

        artifact = train_artifact(stack.pipeline, stack.features, rounds=40)
        uri, sha = put_artifact(stack.store, model, "run-2", artifact)
        stack.store.put_bytes(stack.store.key_of(uri), b"not the artifact that was trained")
        completed = training_completed(model, "run-2", uri, sha, stack.feature_set_uri, f"{stream}@v1")
        stack.registry.runtime.bus.publish(new_event(completed, producer="test"))
        v2 = stack.decided(2)
        assert v2["status"] == "rejected" and "sha256" in v2["gate"]["reason"]
        assert v2["gate"]["challenger_score"] is None

        (rejected,) = wait_for(lambda: stack.events("ModelRejected"), "the ModelRejected event in the log")
        assert rejected.payload["version"] == 2 and rejected.payload["champion_version"] == 1
        assert stack.registry.client.get(f"/v1/models/{model}/aliases/champion").json()["version"] == 1
        assert stack.predict(rows()).json()["version"] == 1
    finally:
        stack.stop()


def test_a_pipeline_applied_on_the_bus_reaches_registry_serving_and_monitor(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str
) -> None:
    """``driftloop pipeline apply FILE`` (its function, the stack running) while the registry, serving and the
    monitor run: each takes the ``PipelineApplied`` from the bus. Before, the model is unknown to all three; after,
    its first version is gated, promoted and served next to the model they started with, and the monitor watches
    it and closes a window of its predictions."""
    first, first_stream = f"fraud-{unique}", f"tx-{unique}"
    pipelines = write_pipeline_dir(tmp_path / "pipelines", first, first_stream, first_version_threshold=0.6)
    stack = Stack(make_settings(pipelines_dir=pipelines), first, first_stream, follow_pipelines=True)
    try:
        monitor = stack.start("monitor", build_monitor)
        model, stream = f"late-{unique}", f"late-tx-{unique}"
        assert stack.serving.client.post(f"/v1/models/{model}/predict", json={"instances": rows()}).status_code == 404
        assert stack.serving.client.get(f"/v2/models/{model}").status_code == 404
        assert monitor.client.get(f"/v1/monitor/{model}").status_code == 404
        assert stack.registry.client.get(f"/v1/models/{model}/versions").status_code == 404

        window = 20
        text = pipeline_text(model, stream, first_version_threshold=0.6)
        text = text.replace("  window_size: 400\n", f"  window_size: {window}\n").replace(
            "  reference_rows: 3000\n", "  reference_rows: 500\n"
        )
        (tmp_path / "late.yaml").write_text(text)
        applied = apply_pipeline(stack.settings, tmp_path / "late.yaml", bus=True)
        assert applied.change == "created" and "running services told" in applied.bus
        for service in stack.services:
            wait_for(
                lambda s=service: model in s.client.get("/healthz").json()["pipelines"]["models"],
                f"{service.runtime.name} to take the applied pipeline",
            )

        cfg = parse_pipeline(text)
        stack.model, stack.stream, stack.pipeline = model, stream, cfg
        stack.features = feature_frame(cfg, rows=3000)
        stack.feature_set_uri = put_feature_set(stack.store, stream, 1, stack.features)
        stack.complete_training("run-late", rounds=30)
        v1 = stack.decided(1)
        assert v1["status"] == "promoted" and v1["gate"]["decision"] == "promoted", v1["gate"]
        wait_for(lambda: stack.served_version() == 1, "serving to load the applied model's v1")
        wait_for(lambda: monitor.client.get(f"/v1/monitor/{model}").json().get("version") == 1, "the monitor's watch")

        for _ in range(3):  # a window and a bit of the new model's predictions, logged by serving
            answer = stack.predict(rows(9))
            assert answer.status_code == 200 and answer.json()["version"] == 1
        reports = wait_for(
            lambda: monitor.client.get(f"/v1/monitor/{model}/drift").json()["reports"], "the monitor's first window"
        )
        assert [(r["version"], r["window_index"]) for r in reports] == [(1, 0)]
        # The engine may still be handling the last predictions when the window's report is stored.
        fill = wait_for(
            lambda: (f := monitor.client.get(f"/v1/monitor/{model}").json()["window_fill"]) >= 27 - window and f,
            "the open window to fill",
        )
        assert fill == 27 - window
        # The model the services started with is still theirs (known, nothing promoted yet).
        assert stack.serving.client.post(f"/v1/models/{first}/predict", json={"instances": rows()}).status_code == 503
    finally:
        stack.stop()
