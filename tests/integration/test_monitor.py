"""The monitor on the real broker and registry: a champion's reference from a Parquet feature set in the object
store, logged predictions with a shifted distribution, and DriftDetected on the topic; the HTTP API."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from monitor_support import CATEGORIES, champion_promoted, prediction_logged, put_reference, raw_inputs
from monitor_triggers_support import DEMO, WINDOW, RunningService, read_events, wait_for

from driftloop.clients.objectstore import open_object_store
from driftloop.contracts.featuredefs import compute_features
from driftloop.contracts.layout import feature_set_prefix
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.contracts.settings import Settings
from driftloop.contracts.topics import DRIFT_DETECTED
from driftloop.runtime.bus import EventBus
from driftloop.services.monitor.reference import read_reference

pytestmark = pytest.mark.integration


def test_shifted_predictions_raise_drift_detected_on_the_topic(
    monitor: tuple[RunningService, PipelineConfig],
) -> None:
    running, pipeline = monitor
    settings = running.runtime.settings
    model, stream = pipeline.model.name, pipeline.stream.name
    rng = np.random.default_rng(42)

    # The champion's training feature set, as the features service would have written it.
    store = open_object_store(settings)
    prefix = put_reference(store, pipeline, raw_inputs(1500, rng))

    producer = EventBus(settings, producer_name="test-serving")
    try:
        producer.publish(champion_promoted(store, model, stream, prefix))
        client = TestClient(running.spec.app)
        wait_for(lambda: client.get(f"/v1/monitor/{model}").json()["version"] == 1, "the champion to be watched")
        status = client.get(f"/v1/monitor/{model}").json()
        assert status["reference_rows"] == 1000
        assert status["reference_dataset_version_id"] == f"{stream}@v1"

        # One window like the reference, then a window (and a bit) with doubled amounts.
        inputs = raw_inputs(WINDOW, rng) + raw_inputs(WINDOW + 30, rng, amount_scale=2.0)
        for i, row in enumerate(inputs):
            producer.publish(prediction_logged(model, i, row, 0.1), wait=False)
        producer.flush()

        wait_for(lambda: len(client.get(f"/v1/monitor/{model}/drift").json()["reports"]) == 2, "two closed windows")
        wait_for(lambda: len(read_events(settings, producer, DRIFT_DETECTED, model)) == 1, "DriftDetected")
    finally:
        producer.close()

    reports = client.get(f"/v1/monitor/{model}/drift").json()["reports"]
    assert [(r["window_index"], r["drifted"]) for r in reports] == [(1, True), (0, False)]
    # The engine may still be handling the last predictions when the window's DriftDetected is out.
    wait_for(lambda: client.get(f"/v1/monitor/{model}").json()["window_fill"] >= 30, "the open window to fill")
    assert client.get(f"/v1/monitor/{model}").json()["window_fill"] == 30

    (drift,) = read_events(settings, producer, DRIFT_DETECTED, model)
    assert drift.envelope.caused_by is None
    assert drift.envelope.cascade_id == drift.id
    assert drift.payload.version == 1
    assert drift.payload.window_index == 1
    assert drift.payload.window_size == WINDOW
    assert drift.payload.reference_dataset_version_id == f"{stream}@v1"
    assert "amount" in drift.payload.drifted_features
    tests = {t.feature: t for t in drift.payload.tests}
    assert set(tests) == set(pipeline.feature_names)
    assert tests["amount"].test == "ks"
    assert tests["merchant_category"].test == "chi2"
    assert tests["amount"].adjusted_p_value == pytest.approx(min(1.0, tests["amount"].p_value * 5))
    assert reports[0]["event_id"] == drift.id

    metrics = client.get("/metrics").text
    assert f'driftloop_monitor_drift_statistic{{feature="amount",model="{model}",test="ks"}}' in metrics


def test_unknown_model_is_404(monitor: tuple[RunningService, PipelineConfig]) -> None:
    running, _ = monitor
    client = TestClient(running.spec.app)
    response = client.get("/v1/monitor/no-such-model")
    assert response.status_code == 404
    assert "no-such-model" in response.json()["detail"]
    assert client.get("/v1/monitor/no-such-model/drift").status_code == 404


def test_reference_is_read_from_s3(s3_endpoint: str, make_settings: Callable[..., Settings], unique: str) -> None:
    settings = make_settings(
        object_store={
            "type": "s3",
            "endpoint": s3_endpoint,
            "bucket": f"monitor-{unique}",
            "access_key": "testing",
            "secret_key": "testing",
        }
    )
    store = open_object_store(settings)
    rng = np.random.default_rng(3)
    frame = compute_features(pd.DataFrame(raw_inputs(300, rng)), DEMO)
    prefix = feature_set_prefix(f"tx-{unique}", 1)
    for part, chunk in enumerate((frame.iloc[:150], frame.iloc[150:])):
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(chunk, preserve_index=False), buffer)
        store.put_bytes(f"{prefix}part-{part:05d}.parquet", buffer.getvalue())
    store.put_bytes(f"{prefix}_manifest.json", b"{}")  # non-Parquet side files are skipped

    reference = read_reference(store, store.uri(prefix), DEMO.feature_names, max_rows=200, seed=1)
    assert list(reference.columns) == DEMO.feature_names
    assert len(reference) == 200
    assert set(reference["merchant_category"]) <= set(CATEGORIES)
    everything = read_reference(store, store.uri(prefix), DEMO.feature_names, max_rows=1000, seed=1)
    assert len(everything) == 300
