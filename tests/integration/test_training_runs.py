"""The training service against real Ray, the Tansu broker, the schema registry and SQLite: TrainingRequested
events on Kafka -> runs fitted on Ray -> artifacts, run records, RunStateChanged and TrainingCompleted events."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pipeline_support import collect_events, consuming, demo_pipeline, service_runtime, write_pipeline
from training_support import request_event, wait_for_run, write_feature_set

from driftloop.client import Client as PlatformClient
from driftloop.clients.db.models import Run
from driftloop.clients.objectstore import ObjectStore, open_object_store
from driftloop.contracts import layout
from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.contracts.settings import Settings
from driftloop.contracts.topics import RUN_STATE_CHANGED, TRAINING_COMPLETED
from driftloop.ops.procs import wait_until
from driftloop.runtime.service import Runtime
from driftloop.services.training.raycluster import shutdown_ray
from driftloop.services.training.service import CONSUMER_GROUP, FEATURES_GROUP_PREFIX, build

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def ray_for_module() -> Iterator[None]:
    """The service's local Ray starts with the first fit and is shut down after the module."""
    yield
    shutdown_ray()


@pytest.fixture
def training(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str
) -> Iterator[tuple[Runtime, PipelineConfig, ObjectStore, TestClient]]:
    """The training service's handlers consuming under a group of this test's own (the broker is shared)."""
    stream, model = f"tx-{unique}", f"fraud-{unique}"
    pipeline = write_pipeline(tmp_path / "pipelines", model, demo_pipeline(stream, model))
    settings = make_settings(pipelines_dir=tmp_path / "pipelines", ray={"num_cpus": 1, "local_fit_max_rows": 0})
    with service_runtime("training", settings) as runtime:
        spec = build(runtime)
        consumer, features = spec.consumers
        assert consumer.group == CONSUMER_GROUP
        # The feature sets' events, read whole by this process: a run waiting for rows after a change wakes on them.
        assert features.broadcast and features.group.startswith(FEATURES_GROUP_PREFIX)
        with consuming(runtime, consumer, unique):
            yield runtime, pipeline, open_object_store(settings), TestClient(spec.app)


def test_a_request_on_the_newest_feature_set_completes_a_run(
    training: tuple[Runtime, PipelineConfig, ObjectStore, TestClient],
) -> None:
    runtime, pipeline, store, client = training
    stream, model = pipeline.stream.name, pipeline.model.name
    write_feature_set(store, pipeline, 1, 400)
    write_feature_set(store, pipeline, 2, 1200)
    request = request_event(model, f"req-{uuid.uuid4().hex[:8]}", None)
    runtime.bus.publish(request)
    run = wait_for_run(runtime, request.payload.request_id)

    assert run.state == "completed", run.error
    assert run.dataset_version_id == f"{stream}@v2"  # null in the request: the newest feature set
    assert run.cause_event_id == request.id and run.cascade_id == request.envelope.cascade_id
    assert run.metrics["roc_auc"] > 0.55 and set(run.metrics) >= {"accuracy", "log_loss"}
    assert run.params["num_leaves"] == 15 and run.holdout["rows"] > 0 and run.holdout["fraction"] == 0.25
    assert run.code_version and run.environment["packages"]["ray"] == "2.60.0"
    assert run.resources["cpus"] == 1 and run.resources["peak_rss_mb_worker"] > 0
    artifact_bytes = store.get_bytes(store.key_of(run.artifact_uri))
    assert hashlib.sha256(artifact_bytes).hexdigest() == run.artifact_sha256
    artifact = ModelArtifact.from_bytes(artifact_bytes, expected_sha256=run.artifact_sha256)
    assert artifact.metadata["run_id"] == run.run_id and artifact.feature_names == pipeline.feature_names

    [completed] = collect_events(runtime.bus, TRAINING_COMPLETED.name, lambda e: e.payload.run_id == run.run_id, 1)
    assert completed.envelope.caused_by == request.id
    assert (
        completed.payload.artifact_sha256 == run.artifact_sha256 and completed.payload.artifact_uri == run.artifact_uri
    )
    assert completed.payload.metrics == pytest.approx(run.metrics)
    assert json.loads(completed.payload.holdout_json) == run.holdout
    assert json.loads(completed.payload.params_json)["num_leaves"] == 15
    assert completed.payload.feature_set_uri == store.uri(layout.feature_set_prefix(stream, 2))
    assert completed.payload.feature_names == pipeline.feature_names
    states = collect_events(runtime.bus, RUN_STATE_CHANGED.name, lambda e: e.payload.run_id == run.run_id, 3)
    assert [(e.payload.previous_state, e.payload.state) for e in states] == [
        (None, "pending"),
        ("pending", "running"),
        ("running", "completed"),
    ]
    assert all(e.envelope.caused_by == request.id for e in states)

    listing = client.get("/v1/runs", params={"model": model, "state": "completed"}).json()["runs"]
    assert [r["run_id"] for r in listing] == [run.run_id]
    assert client.get("/v1/runs", params={"model": model, "state": "failed"}).json()["runs"] == []
    assert client.get(f"/v1/runs/{run.run_id}").json()["artifact_sha256"] == run.artifact_sha256
    assert "holdout metrics" in client.get(f"/v1/runs/{run.run_id}/logs").text
    assert client.get("/v1/runs/run-nope").status_code == 404
    assert client.get("/v1/runs", params={"state": "bogus"}).status_code == 422
    # The public client reads the real record into its typed Run.
    with PlatformClient(urls={"training": "http://testserver"}, token="", transport=client._transport) as dl:
        typed = dl.run(run.run_id)
        listed = dl.runs(model=model, state="completed")
    assert [r.run_id for r in listed] == [run.run_id] and typed.state == "completed"
    assert typed.metrics == pytest.approx(run.metrics) and typed.params["num_leaves"] == 15
    assert typed.holdout == run.holdout and typed.created_at is not None and typed.ended_at is not None


def test_a_missing_dataset_fails_the_run_and_a_repeated_request_makes_no_second_run(
    training: tuple[Runtime, PipelineConfig, ObjectStore, TestClient],
) -> None:
    runtime, pipeline, store, client = training
    stream, model = pipeline.stream.name, pipeline.model.name
    missing = request_event(model, f"req-{uuid.uuid4().hex[:8]}", f"{stream}@v9")
    runtime.bus.publish(missing)
    failed = wait_for_run(runtime, missing.payload.request_id)
    assert failed.state == "failed" and f"{stream}@v9" in failed.error
    assert failed.artifact_uri is None
    assert f"{stream}@v9" in client.get(f"/v1/runs/{failed.run_id}/logs").text
    states = collect_events(runtime.bus, RUN_STATE_CHANGED.name, lambda e: e.payload.run_id == failed.run_id, 2)
    assert [e.payload.state for e in states] == ["pending", "failed"] and f"{stream}@v9" in states[-1].payload.message

    # The same request twice (two events, one request id: e.g. a trigger replaying it) gives one run.
    write_feature_set(store, pipeline, 1, 400)
    request_id = f"req-{uuid.uuid4().hex[:8]}"
    first, again = request_event(model, request_id, f"{stream}@v1"), request_event(model, request_id, f"{stream}@v1")
    runtime.bus.publish(first)
    runtime.bus.publish(again)
    run = wait_for_run(runtime, request_id)
    assert run.state == "completed", run.error
    # A later marker request shows the consumer has handled both copies before we count.
    marker = request_event(model, f"req-{uuid.uuid4().hex[:8]}", f"{stream}@v404")
    runtime.bus.publish(marker)
    wait_for_run(runtime, marker.payload.request_id)
    with runtime.Session() as session:
        runs = session.scalars(sa.select(Run).where(Run.request_id == request_id)).all()
    assert len(runs) == 1
    assert runs[0].cause_event_id == first.id


# --- hyperparameter search, abort, rerun ------------------------------------------------------------------

SMALL_SEARCH = {
    "trials": 4,
    "concurrency": 1,
    "grace_rounds": 10,
    "report_every": 10,
    "space": {
        "num_leaves": {"type": "int", "low": 4, "high": 31, "log": True},
        "learning_rate": {"type": "float", "low": 0.02, "high": 0.3, "log": True},
        "min_child_samples": {"type": "choice", "values": [10, 20, 40]},
    },
}

# Trials that run for minutes, so that the abort surely lands while they run.
ENDLESS_SEARCH = {
    "trials": 50,
    "concurrency": 1,
    "grace_rounds": 5000,
    "report_every": 200,
    "space": {"n_estimators": {"type": "int", "low": 20000, "high": 30000}},
}


@pytest.fixture
def searching(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings], tmp_path: Path, unique: str
) -> Iterator[tuple[Runtime, PipelineConfig, ObjectStore, TestClient]]:
    """The training service with a pipeline whose model has the search block ``request.param``."""
    stream, model = f"tx-{unique}", f"fraud-{unique}"
    pipeline = write_pipeline(
        tmp_path / "pipelines", model, demo_pipeline(stream, model, model={"search": request.param})
    )
    assert pipeline.model.search is not None
    settings = make_settings(pipelines_dir=tmp_path / "pipelines", ray={"num_cpus": 1, "local_fit_max_rows": 0})
    with service_runtime("training", settings) as runtime:
        spec = build(runtime)
        consumer, _ = spec.consumers
        with consuming(runtime, consumer, unique, join_timeout=60):
            yield runtime, pipeline, open_object_store(settings), TestClient(spec.app)


@pytest.mark.parametrize("searching", [SMALL_SEARCH], indirect=True)
def test_a_search_tracks_its_trials_refits_the_best_and_a_rerun_reproduces_the_metrics(
    searching: tuple[Runtime, PipelineConfig, ObjectStore, TestClient],
) -> None:
    runtime, pipeline, store, client = searching
    model = pipeline.model.name
    write_feature_set(store, pipeline, 1, 1500)
    request = request_event(model, f"req-{uuid.uuid4().hex[:8]}", None)
    runtime.bus.publish(request)
    run = wait_for_run(runtime, request.payload.request_id)
    assert run.state == "completed", run.error

    # Every trial with its configuration and its validation score per round; ASHA cut some short.
    assert len(run.trials) == 4 and all(t["status"] == "finished" for t in run.trials)
    assert all(len(t["steps"]) >= 1 and t["steps"][0]["step"] == 10 for t in run.trials)
    assert all(4 <= t["config"]["num_leaves"] <= 31 for t in run.trials)
    assert run.search["early_stopped"] >= 1, run.trials
    assert any(t["rounds"] == 120 for t in run.trials)  # at least one trial ran its full rounds
    best = next(t for t in run.trials if t["trial_id"] == run.search["best_trial"])
    assert best["final"] == max(t["final"] for t in run.trials)
    # The best configuration, refit: the run's params and model.
    assert {k: run.params[k] for k in best["config"]} == best["config"]
    artifact = ModelArtifact.from_bytes(store.get_bytes(store.key_of(run.artifact_uri)), run.artifact_sha256)
    assert artifact.params == run.params and run.metrics["roc_auc"] > 0.55

    # Artifacts with their sha256: model, feature list, training-set reference, plots, trials.
    assert set(run.artifacts) >= {
        "model.zip",
        "features.json",
        "training_set.json",
        "feature_importance.png",
        "confusion_matrix.png",
        "roc.png",
        "trials.json",
    }
    for name, entry in run.artifacts.items():
        data = store.get_bytes(store.key_of(entry["uri"]))
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        if name.endswith(".png"):
            assert data.startswith(b"\x89PNG"), name
    training_set = json.loads(store.get_bytes(store.key_of(run.artifacts["training_set.json"]["uri"])))
    assert training_set["dataset_version_id"] == run.dataset_version_id and training_set["manifest_sha256"]
    assert "trial" in client.get(f"/v1/runs/{run.run_id}/logs").text

    # A rerun: same data, features, params and seed, no search -> the same holdout metrics.
    answer = client.post(f"/v1/runs/{run.run_id}/rerun", json={"reason": "reproduce"})
    assert answer.status_code == 202, answer.text
    rerun = wait_for_run(runtime, answer.json()["request_id"])
    assert rerun.state == "completed", rerun.error
    assert rerun.rerun_of == run.run_id and rerun.trigger == "rerun" and not rerun.trials
    assert rerun.dataset_version_id == run.dataset_version_id and rerun.params == run.params
    assert rerun.metrics == pytest.approx(run.metrics, abs=1e-9)
    listed = client.get("/v1/runs", params={"rerun_of": run.run_id}).json()["runs"]
    assert [r["run_id"] for r in listed] == [rerun.run_id]
    assert client.post("/v1/runs/run-nope/rerun").status_code == 404


@pytest.mark.parametrize("searching", [ENDLESS_SEARCH], indirect=True)
def test_abort_stops_a_running_search_and_frees_the_cpus(
    searching: tuple[Runtime, PipelineConfig, ObjectStore, TestClient],
) -> None:
    import ray

    runtime, pipeline, store, client = searching
    write_feature_set(store, pipeline, 1, 1500)
    request = request_event(pipeline.model.name, f"req-{uuid.uuid4().hex[:8]}", None)
    runtime.bus.publish(request)
    running = wait_for_run(runtime, request.payload.request_id, states=("running",))

    def trial_busy() -> bool:
        text = client.get(f"/v1/runs/{running.run_id}/logs").text
        return "started" in text and ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]

    wait_until(trial_busy, 120, "a trial holding a CPU")
    answer = client.post(f"/v1/runs/{running.run_id}/abort")
    assert answer.status_code == 202, answer.text
    run = wait_for_run(runtime, request.payload.request_id, states=("aborted", "completed", "failed"))
    assert run.state == "aborted", run.error
    assert "aborted" in client.get(f"/v1/runs/{run.run_id}/logs").text.lower()
    wait_until(
        lambda: ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"], 30, "Ray's CPUs free again"
    )
    states = collect_events(runtime.bus, RUN_STATE_CHANGED.name, lambda e: e.payload.run_id == run.run_id, 3)
    assert [e.payload.state for e in states] == ["pending", "running", "aborted"]
    assert client.post(f"/v1/runs/{run.run_id}/abort").status_code == 409
    assert client.get("/v1/runs", params={"state": "aborted"}).json()["runs"][0]["run_id"] == run.run_id
