"""Prediction drift alarms on the real broker and registry: with inputs like the reference throughout, a window whose
predictions are distributed like the champion's first window raises nothing, and a window of shifted predictions
raises ``DriftDetected`` with ``prediction_drifted`` (no feature drifted), on the topic, in the report and on the
``driftloop_monitor_prediction_drift`` gauge."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import test_monitor
from fastapi.testclient import TestClient
from monitor_triggers_support import read_events, wait_for

from driftloop.bus import EventBus
from driftloop.events import new_event
from driftloop.featuredefs import compute_features
from driftloop.layout import feature_set_prefix
from driftloop.objectstore import open_object_store
from driftloop.topics import DRIFT_DETECTED

pytestmark = pytest.mark.integration

WINDOW = test_monitor.WINDOW
# The monitor service with windows of WINDOW predictions (from the monitor's integration tests).
monitor = test_monitor.monitor


def test_shifted_predictions_alarm_and_reference_like_ones_do_not(monitor) -> None:  # type: ignore[no-untyped-def]
    running, pipeline = monitor
    settings = running.runtime.settings
    model, stream = pipeline.model.name, pipeline.stream.name
    rng = np.random.default_rng(7)
    store = open_object_store(settings)
    reference = compute_features(pd.DataFrame(test_monitor.raw_inputs(1500, rng)), pipeline)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(reference, preserve_index=False), buffer)
    prefix = feature_set_prefix(stream, 1)
    store.put_bytes(prefix + "part-00000.parquet", buffer.getvalue())

    producer = EventBus(settings, producer_name="test-serving")
    client = TestClient(running.spec.app)
    try:
        promoted = {
            "model": model,
            "version": 1,
            "alias": "champion",
            "previous_version": None,
            "artifact_uri": store.uri(f"models/{model}/runs/r1/model.zip"),
            "artifact_sha256": "0" * 64,
            "dataset_version_id": f"{stream}@v1",
            "feature_set_uri": store.uri(prefix),
            "reason": "first version",
            "gate_json": "{}",
        }
        producer.publish(new_event("ModelPromoted", promoted, producer="test-registry"))
        wait_for(lambda: client.get(f"/v1/monitor/{model}").json()["version"] == 1, "the champion to be watched")

        # Window 0: the baseline; window 1: predictions from the same distribution; window 2: shifted up.
        scores = np.concatenate(
            [rng.beta(2, 8, WINDOW), rng.beta(2, 8, WINDOW), np.clip(rng.beta(2, 8, WINDOW) + 0.3, 0, 1)]
        )
        inputs = test_monitor.raw_inputs(3 * WINDOW, rng)
        for i, (row, score) in enumerate(zip(inputs, scores, strict=True)):
            data = {
                "request_id": f"req-{i}",
                "model": model,
                "version": 1,
                "index": 0,
                "inputs": row,
                "prediction": float(score),
                "entity": row["customer_id"],
            }
            producer.publish(new_event("PredictionLogged", data, producer="test-serving"), wait=False)
        producer.flush()

        wait_for(lambda: len(client.get(f"/v1/monitor/{model}/drift").json()["reports"]) == 3, "three windows")
        wait_for(lambda: len(read_events(settings, producer, DRIFT_DETECTED, model)) == 1, "DriftDetected")
        (drift,) = read_events(settings, producer, DRIFT_DETECTED, model)
    finally:
        producer.close()

    reports = client.get(f"/v1/monitor/{model}/drift").json()["reports"]
    assert [(r["window_index"], r["drifted"]) for r in reports] == [(2, True), (1, False), (0, False)]
    assert reports[2]["prediction_drift"] is None  # the baseline window
    assert reports[1]["prediction_drift"]["alarm"] is False
    assert reports[0]["prediction_drift"]["alarm"] is True and reports[0]["event_id"] == drift.id
    assert reports[0]["drifted_features"] == []

    assert drift["window_index"] == 2 and drift["prediction_drifted"] is True
    assert drift["drifted_features"] == []
    test = drift["prediction_test"]
    assert test["test"] == "ks" and test["p_value"] < pipeline.monitor.alpha
    assert test["psi"] > pipeline.monitor.prediction_drift.psi_threshold

    metrics = client.get("/metrics").text
    assert f'driftloop_monitor_prediction_drift{{model="{model}"}} 1.0' in metrics
