"""A small real cascade for the integration tests that run services as processes (dashboard, observability).

- ``drift_window_pipelines(directory, model, stream, window)``: the pipeline folder of ``model_factory``'s
  pipeline with drift windows of ``window`` predictions (small, so that one request fills a window).
- ``play_training(bus, trained, cause, run_id, ...)``: the training side of a cascade played by the test: a
  ``TrainingRequested`` caused by ``cause``, a small real LightGBM model in the store and its ``TrainingCompleted``.
- ``post_drifted_traffic(serving_url, model, rows)``: one predict request of drifted transactions (amounts 30 times
  larger, night hours), answered with 200.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pandas as pd
from model_factory import put_artifact, raw_transactions, train_artifact, training_completed, write_pipeline_dir

from driftloop.clients.objectstore import ObjectStore
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import TrainingRequested
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.runtime.bus import EventBus


def drift_window_pipelines(directory: Path, model: str, stream: str, window: int) -> Path:
    """``directory`` with ``<model>.yaml`` (any model improves on the champion), drift windows of ``window``."""
    pipelines = write_pipeline_dir(directory, model, stream, min_improvement=0.0)
    text = (pipelines / f"{model}.yaml").read_text().replace("window_size: 400", f"window_size: {window}")
    (pipelines / f"{model}.yaml").write_text(text)
    return pipelines


@dataclass
class TrainingData:
    """What the played training trains on: the pipeline, its feature frame and the stream's v1 feature set."""

    pipeline: PipelineConfig
    store: ObjectStore
    features: pd.DataFrame
    feature_set_uri: str


def play_training(
    bus: EventBus,
    trained: TrainingData,
    cause: Event,
    run_id: str,
    *,
    trigger: str,
    reason: str,
    rounds: int,
    quality: str = "good",
    request_id: str | None = None,
    completed_trigger: str | None = None,
) -> None:
    """Play the training service: ``TrainingRequested`` (``request_id``, by default ``req-<run_id>``) caused by
    ``cause``, then a model trained on v1 and its ``TrainingCompleted`` caused by the request (its trigger
    ``completed_trigger``, by default the request's)."""
    model, stream = trained.pipeline.model.name, trained.pipeline.stream.name
    request = new_event(
        TrainingRequested(request_id=request_id or f"req-{run_id}", model=model, trigger=trigger, reason=reason),
        producer="test-triggers",
        cause=cause,
    )
    bus.publish(request)
    artifact = train_artifact(trained.pipeline, trained.features, quality=quality, rounds=rounds)
    uri, sha = put_artifact(trained.store, model, run_id, artifact)
    completed = training_completed(model, run_id, uri, sha, trained.feature_set_uri, f"{stream}@v1")
    completed = replace(completed, trigger=completed_trigger or trigger)
    bus.publish(new_event(completed, producer="test-training", cause=request))


def post_drifted_traffic(serving_url: str, model: str, rows: int) -> None:
    """One predict request of ``rows`` drifted transactions (amounts 30 times larger, only night hours)."""
    raw = raw_transactions(rows, seed=9).drop(columns=["is_fraud"])
    raw["amount"] = raw["amount"] * 30
    raw["hour"] = 2
    raw["event_time"] = raw["event_time"].astype(str)
    response = httpx.post(f"{serving_url}/v1/models/{model}/predict", json={"instances": raw.to_dict("records")})
    assert response.status_code == 200, response.text
