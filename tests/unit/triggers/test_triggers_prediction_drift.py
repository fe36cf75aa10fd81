"""Prediction drift as a drift signal: when a window's prediction test alarms (``monitor.prediction_drift``), and
how the retrain policy treats a drift of the predictions alone (``triggers.drift.on_prediction_drift``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import triggers_support as th
from pydantic import ValidationError

from driftloop.contracts.events import Event
from driftloop.contracts.payloads import DriftDetected, PredictionTest
from driftloop.contracts.pipeline import (
    DriftTrigger,
    MonitorSpec,
    PredictionDriftSpec,
    RetrainPolicy,
    TriggerSpec,
    load_pipeline,
)
from driftloop.services.monitor.stats import prediction_drift_alarms, prediction_test
from driftloop.services.triggers.policy import ModelView, decide

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
VIEW = ModelView(has_champion=True, latest_dataset_version_id="transactions@v3")
PIPELINE = load_pipeline(Path(__file__).resolve().parents[3] / "pipelines" / "transactions.yaml")


def scores(shift: float = 0.0, n: int = 500, seed: int = 0) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).beta(2, 8, n) + shift, 0, 1)


def test_shifted_predictions_alarm_and_same_distribution_does_not() -> None:
    spec = PredictionDriftSpec()
    baseline = scores(seed=1)
    assert prediction_drift_alarms(prediction_test(baseline, scores(0.3, seed=2), 0.01), spec, 0.01)
    assert not prediction_drift_alarms(prediction_test(baseline, scores(seed=3), 0.01), spec, 0.01)


def test_each_threshold_can_hold_the_alarm_back() -> None:
    significant = {"p_value": 1e-6, "psi": 0.15, "wasserstein": 0.4}
    assert not prediction_drift_alarms(significant, PredictionDriftSpec(), 0.01)  # PSI 0.15 <= default 0.2
    assert prediction_drift_alarms(significant, PredictionDriftSpec(psi_threshold=None), 0.01)
    assert prediction_drift_alarms(significant, PredictionDriftSpec(psi_threshold=0.1), 0.01)
    assert not prediction_drift_alarms(significant, PredictionDriftSpec(psi_threshold=None, enabled=False), 0.01)
    assert not prediction_drift_alarms(
        significant, PredictionDriftSpec(psi_threshold=None, wasserstein_threshold=0.5), 0.01
    )
    # The p-value against the spec's own alpha, else the monitor's.
    weak = {"p_value": 0.03, "psi": 1.0, "wasserstein": 1.0}
    assert not prediction_drift_alarms(weak, PredictionDriftSpec(), 0.01)
    assert prediction_drift_alarms(weak, PredictionDriftSpec(alpha=0.05), 0.01)


def test_pipeline_section_is_strict_and_defaults_on() -> None:
    assert PIPELINE.monitor.prediction_drift.enabled and PIPELINE.triggers.drift.on_prediction_drift
    monitor = MonitorSpec.model_validate({"prediction_drift": {"psi_threshold": 0.3, "alpha": 0.001}})
    assert (monitor.prediction_drift.psi_threshold, monitor.prediction_drift.alpha) == (0.3, 0.001)
    with pytest.raises(ValidationError, match="psi_treshold"):
        MonitorSpec.model_validate({"prediction_drift": {"psi_treshold": 0.3}})
    with pytest.raises(ValidationError, match="alpha"):
        MonitorSpec.model_validate({"prediction_drift": {"alpha": 2}})


def test_prediction_drift_alone_retrains_unless_the_pipeline_says_no() -> None:
    every_drift = RetrainPolicy(retrain_on=["drift"])
    policy = TriggerSpec(drift=DriftTrigger(wait_for_fresh_data=False), policy=every_drift)
    assert decide("drift", policy, VIEW, NOW, prediction_only=True).status == "requested"
    off = TriggerSpec(drift=DriftTrigger(wait_for_fresh_data=False, on_prediction_drift=False), policy=every_drift)
    decision = decide("drift", off, VIEW, NOW, prediction_only=True)
    assert decision.status == "suppressed" and "on_prediction_drift" in decision.note
    # Feature drift (with or without prediction drift) still retrains.
    assert decide("drift", off, VIEW, NOW, prediction_only=False).status == "requested"


def prediction_drift_event(window: int) -> Event[DriftDetected]:
    event = th.drift_event(window)
    test = PredictionTest(test="ks", statistic=0.4, p_value=1e-9, psi=0.8, wasserstein=1.2, drifted=True)
    payload = replace(event.payload, drifted_features=[], prediction_drifted=True, prediction_test=test)
    return replace(event, payload=payload)


@pytest.mark.parametrize("retrain", [True, False])
def test_triggers_record_prediction_drift_per_the_pipeline(make: Any, published: list[Event], retrain: bool) -> None:
    cfg = th.pipeline(cooldown=0)
    cfg = cfg.model_copy(
        update={
            "triggers": cfg.triggers.model_copy(
                update={"drift": DriftTrigger(on_prediction_drift=retrain, wait_for_fresh_data=False)}
            )
        }
    )
    handlers = make(cfg)
    handlers.on_features_materialized(th.features_event(1))
    handlers.on_model_promoted(th.promoted_event())
    drift = prediction_drift_event(3)
    handlers.on_drift_detected(drift)
    (decision,) = [d for d in handlers.requests(th.MODEL, 50) if d["cause_event_id"] == drift.id]
    assert "predictions (ks=0.400, psi=0.800)" in decision["reason"]
    assert decision["status"] == ("requested" if retrain else "suppressed")
    assert [e.payload.trigger for e in published] == (["new_data", "drift"] if retrain else ["new_data"])
