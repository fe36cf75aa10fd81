"""Prediction drift alarms on the real broker and registry: with inputs like the reference throughout, a window whose
predictions are distributed like the champion's first window raises nothing, and a window of shifted predictions
raises ``DriftDetected`` with ``prediction_drifted`` (no feature drifted), on the topic, in the report and on the
``driftloop_monitor_prediction_drift`` gauge."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from monitor_support import champion_promoted, prediction_logged, put_reference, raw_inputs
from monitor_triggers_support import WINDOW, RunningService, read_events, wait_for

from driftloop.clients.objectstore import open_object_store
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.contracts.topics import DRIFT_DETECTED
from driftloop.runtime.bus import EventBus

pytestmark = pytest.mark.integration


def test_shifted_predictions_alarm_and_reference_like_ones_do_not(
    monitor: tuple[RunningService, PipelineConfig],
) -> None:
    running, pipeline = monitor
    settings = running.runtime.settings
    model, stream = pipeline.model.name, pipeline.stream.name
    rng = np.random.default_rng(7)
    store = open_object_store(settings)
    prefix = put_reference(store, pipeline, raw_inputs(1500, rng))

    producer = EventBus(settings, producer_name="test-serving")
    client = TestClient(running.spec.app)
    try:
        producer.publish(champion_promoted(store, model, stream, prefix))
        wait_for(lambda: client.get(f"/v1/monitor/{model}").json()["version"] == 1, "the champion to be watched")

        # Window 0: the baseline; window 1: predictions from the same distribution; window 2: shifted up.
        scores = np.concatenate(
            [rng.beta(2, 8, WINDOW), rng.beta(2, 8, WINDOW), np.clip(rng.beta(2, 8, WINDOW) + 0.3, 0, 1)]
        )
        inputs = raw_inputs(3 * WINDOW, rng)
        for i, (row, score) in enumerate(zip(inputs, scores, strict=True)):
            producer.publish(prediction_logged(model, i, row, float(score)), wait=False)
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

    assert drift.payload.window_index == 2 and drift.payload.prediction_drifted is True
    assert drift.payload.drifted_features == []
    test = drift.payload.prediction_test
    assert test is not None and test.test == "ks" and test.p_value < pipeline.monitor.alpha
    assert test.psi > pipeline.monitor.prediction_drift.psi_threshold

    metrics = client.get("/metrics").text
    assert f'driftloop_monitor_prediction_drift{{model="{model}"}} 1.0' in metrics
