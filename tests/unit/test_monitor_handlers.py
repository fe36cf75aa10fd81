"""The monitor's handlers without Kafka: a SQLite database, a local object store, published events collected."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from driftloop.db import create_engine_for, migrate, session_factory
from driftloop.db.models import DriftReport
from driftloop.errors import NotFoundError
from driftloop.events import Event, new_event
from driftloop.featuredefs import compute_features
from driftloop.layout import feature_set_prefix
from driftloop.objectstore import LocalObjectStore
from driftloop.pipeline import PipelineConfig, load_pipeline
from driftloop.services.monitor.handlers import MonitorHandlers

PIPELINE = load_pipeline(Path(__file__).resolve().parents[2] / "pipelines" / "transactions.yaml")
MODEL = PIPELINE.model.name
CATEGORIES = ["grocery", "travel", "electronics", "fashion", "gaming"]


def small_pipeline() -> PipelineConfig:
    monitor = PIPELINE.monitor.model_copy(update={"window_size": 200, "reference_rows": 1000})
    return PIPELINE.model_copy(update={"monitor": monitor})


def raw_inputs(n: int, rng: np.random.Generator, amount_scale: float = 1.0) -> list[dict[str, Any]]:
    return [
        {
            "customer_id": f"c{rng.integers(0, 100)}",
            "amount": float(rng.lognormal(3.5, 1.0) * amount_scale),
            "age": int(rng.integers(18, 90)),
            "hour": int(rng.integers(0, 24)),
            "merchant_category": str(rng.choice(CATEGORIES)),
        }
        for _ in range(n)
    ]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    store = LocalObjectStore(tmp_path / "objects")
    rng = np.random.default_rng(1)
    reference = compute_features(pd.DataFrame(raw_inputs(2000, rng)), PIPELINE, keep_keys=True)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(reference, preserve_index=False), buffer)
    prefix = feature_set_prefix("transactions", 1)
    store.put_bytes(prefix + "part-00000.parquet", buffer.getvalue())
    published: list[Event] = []
    Session = session_factory(create_engine_for(url))
    pipelines = {MODEL: small_pipeline()}
    return {
        "Session": Session,
        "store": store,
        "published": published,
        "feature_set_uri": store.uri(prefix),
        "rng": rng,
        "make": lambda: MonitorHandlers(pipelines, Session, store, published.append),
    }


def promoted(env: dict[str, Any], version: int = 1, alias: str = "champion") -> Event:
    data = {
        "model": MODEL,
        "version": version,
        "alias": alias,
        "previous_version": None,
        "artifact_uri": "file:///x/model.zip",
        "artifact_sha256": "0" * 64,
        "dataset_version_id": "transactions@v1",
        "feature_set_uri": env["feature_set_uri"],
        "reason": "first version",
        "gate_json": "{}",
    }
    return new_event("ModelPromoted", data, producer="test")


def prediction(inputs: dict[str, Any], version: int = 1) -> Event:
    data = {
        "request_id": "r1",
        "model": MODEL,
        "version": version,
        "index": 0,
        "inputs": inputs,
        "prediction": 0.1,
        "entity": inputs.get("customer_id"),
    }
    return new_event("PredictionLogged", data, producer="test")


def test_shifted_predictions_emit_drift_detected_once_per_window(env: dict[str, Any]) -> None:
    handlers: MonitorHandlers = env["make"]()
    handlers.on_model_promoted(promoted(env))
    status = handlers.status(MODEL)
    assert status["version"] == 1
    assert status["reference_rows"] == 1000
    assert status["reference_dataset_version_id"] == "transactions@v1"

    for inputs in raw_inputs(200, env["rng"]):
        handlers.on_prediction_logged(prediction(inputs))
    assert env["published"] == []  # same distribution: a report, no drift
    for inputs in raw_inputs(250, env["rng"], amount_scale=2.0):
        handlers.on_prediction_logged(prediction(inputs))

    assert len(env["published"]) == 1
    drift = env["published"][0]
    assert drift.type == "DriftDetected"
    assert drift.envelope.caused_by is None
    assert drift["window_index"] == 1
    assert drift["reference_dataset_version_id"] == "transactions@v1"
    assert "amount" in drift["drifted_features"]
    assert {t["feature"] for t in drift["tests"]} == set(PIPELINE.feature_names)
    assert handlers.status(MODEL)["window_fill"] == 50

    reports = handlers.reports(MODEL, limit=10)
    assert [r["window_index"] for r in reports] == [1, 0]
    assert [r["drifted"] for r in reports] == [True, False]
    assert reports[0]["event_id"] == drift.id


def test_predictions_of_other_versions_are_not_windowed(env: dict[str, Any]) -> None:
    handlers: MonitorHandlers = env["make"]()
    handlers.on_model_promoted(promoted(env, version=2))
    for inputs in raw_inputs(30, env["rng"]):
        handlers.on_prediction_logged(prediction(inputs, version=1))
    handlers.on_prediction_logged(prediction(raw_inputs(1, env["rng"])[0], version=2))
    assert handlers.status(MODEL)["window_fill"] == 1


def test_invalid_inputs_are_skipped_not_windowed(env: dict[str, Any]) -> None:
    handlers: MonitorHandlers = env["make"]()
    handlers.on_model_promoted(promoted(env))
    handlers.on_prediction_logged(prediction({"customer_id": "c1", "age": 30}))
    assert handlers.status(MODEL)["window_fill"] == 0


def test_restart_reloads_the_champion_and_continues_window_numbering(env: dict[str, Any]) -> None:
    first: MonitorHandlers = env["make"]()
    first.on_model_promoted(promoted(env))
    for inputs in raw_inputs(230, env["rng"]):
        first.on_prediction_logged(prediction(inputs))

    restarted: MonitorHandlers = env["make"]()
    status = restarted.status(MODEL)
    assert status["version"] == 1
    assert status["window_index"] == 1
    assert status["window_fill"] == 0  # windows are in memory: a restart starts a new one
    for inputs in raw_inputs(200, env["rng"]):
        restarted.on_prediction_logged(prediction(inputs))
    with env["Session"]() as session:
        indexes = sorted(session.query(DriftReport.window_index).filter(DriftReport.model == MODEL).all())
    assert [i for (i,) in indexes] == [0, 1]


def test_non_champion_alias_and_unknown_model(env: dict[str, Any]) -> None:
    handlers: MonitorHandlers = env["make"]()
    handlers.on_model_promoted(promoted(env, alias="staging"))
    assert handlers.status(MODEL)["version"] is None
    with pytest.raises(NotFoundError):
        handlers.status("no-such-model")
    with pytest.raises(NotFoundError):
        handlers.reports("no-such-model", limit=5)
