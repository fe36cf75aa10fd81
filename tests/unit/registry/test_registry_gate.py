"""The gate decision, on pure scores and on small real LightGBM models scored on the same holdout."""

from __future__ import annotations

import math

import numpy as np
import pytest
from model_factory import feature_frame, make_pipeline, train_artifact

from driftloop.contracts.evaluation import SAMPLE_WEIGHT_COLUMN, score
from driftloop.contracts.pipeline import GateSpec
from driftloop.services.registry import gate as gating


def test_better_challenger_by_at_least_min_improvement_is_promoted() -> None:
    spec = GateSpec(metric="roc_auc", direction="maximize", min_improvement=0.01)
    decision = gating.decide(spec, 0.85, 0.80)
    assert decision.promote
    assert decision.margin == pytest.approx(0.05)


def test_improvement_below_min_improvement_is_rejected() -> None:
    spec = GateSpec(metric="roc_auc", direction="maximize", min_improvement=0.01)
    decision = gating.decide(spec, 0.805, 0.80)
    assert not decision.promote
    assert "not better" in decision.reason


def test_exactly_min_improvement_is_promoted_despite_float_noise() -> None:
    spec = GateSpec(metric="roc_auc", direction="maximize", min_improvement=0.01)
    assert gating.decide(spec, 0.81, 0.80).promote


def test_worse_challenger_is_rejected() -> None:
    decision = gating.decide(GateSpec(), 0.70, 0.80)
    assert not decision.promote
    assert decision.margin == pytest.approx(-0.10)


def test_equal_score_is_not_better_even_with_zero_min_improvement() -> None:
    assert not gating.decide(GateSpec(min_improvement=0.0), 0.8, 0.8).promote


def test_minimize_direction_prefers_lower_scores() -> None:
    spec = GateSpec(metric="log_loss", direction="minimize", min_improvement=0.02)
    assert gating.decide(spec, 0.30, 0.35).promote
    assert not gating.decide(spec, 0.34, 0.35).promote
    assert not gating.decide(spec, 0.40, 0.35).promote


def test_first_version_without_threshold_is_promoted() -> None:
    decision = gating.decide(GateSpec(first_version_threshold=None), 0.51, None)
    assert decision.promote
    assert decision.margin is None


def test_first_version_must_pass_threshold() -> None:
    spec = GateSpec(first_version_threshold=0.6)
    assert gating.decide(spec, 0.65, None).promote
    rejected = gating.decide(spec, 0.55, None)
    assert not rejected.promote
    assert "threshold" in rejected.reason


def test_first_version_threshold_for_a_minimized_metric() -> None:
    spec = GateSpec(metric="rmse", direction="minimize", first_version_threshold=2.0)
    assert gating.decide(spec, 1.5, None).promote
    assert not gating.decide(spec, 2.5, None).promote


def test_absolute_floor_rejects_a_challenger_that_beats_a_weak_champion() -> None:
    spec = GateSpec(min_improvement=0.01, floor=0.7)
    rejected = gating.decide(spec, 0.68, 0.55)
    assert not rejected.promote and "floor" in rejected.reason
    assert gating.decide(spec, 0.72, 0.55).promote
    assert not gating.decide(spec, 0.65, None).promote  # also for a first version
    ceiling = GateSpec(metric="rmse", direction="minimize", floor=2.0)
    assert not gating.decide(ceiling, 2.5, 3.0).promote
    assert gating.decide(ceiling, 1.5, 3.0).promote


def test_nan_challenger_score_is_never_promoted() -> None:
    assert not gating.decide(GateSpec(), math.nan, None).promote


@pytest.fixture(scope="module")
def trained() -> dict:
    pipeline = make_pipeline(first_version_threshold=0.6, min_improvement=0.01)
    features = feature_frame(pipeline, rows=3000)
    return {
        "pipeline": pipeline,
        "holdout": gating.holdout_rows(features, pipeline),
        "good": train_artifact(pipeline, features, quality="good"),
        "bad": train_artifact(pipeline, features, quality="bad"),
    }


def test_holdout_is_the_pipelines_fraction_of_labelled_rows(trained: dict) -> None:
    rows = len(trained["holdout"])
    assert 0.18 * 3000 < rows < 0.32 * 3000  # holdout_fraction 0.25, hashed


def test_good_challenger_beats_bad_champion_on_real_models(trained: dict) -> None:
    result = gating.evaluate(trained["pipeline"], trained["good"], trained["holdout"], trained["bad"], 1)
    assert result.decision.promote, result.decision.reason
    assert result.challenger_score > result.champion_score + 0.01
    assert result.holdout_rows == len(trained["holdout"])
    numbers = result.as_dict(trained["pipeline"].gate, "tx@v1", "file:///fs")
    assert numbers["decision"] == "promoted"
    assert numbers["champion_version"] == 1
    assert numbers["margin"] == pytest.approx(result.challenger_score - result.champion_score)


def test_bad_challenger_against_good_champion_is_rejected(trained: dict) -> None:
    result = gating.evaluate(trained["pipeline"], trained["bad"], trained["holdout"], trained["good"], 3)
    assert not result.decision.promote
    assert result.challenger_score < result.champion_score
    assert result.as_dict(trained["pipeline"].gate, "tx@v2", "u")["decision"] == "rejected"


def test_first_good_model_passes_threshold_and_first_bad_fails(trained: dict) -> None:
    good = gating.evaluate(trained["pipeline"], trained["good"], trained["holdout"], None, None)
    bad = gating.evaluate(trained["pipeline"], trained["bad"], trained["holdout"], None, None)
    assert good.decision.promote and good.challenger_score >= 0.6
    assert not bad.decision.promote and bad.challenger_score < 0.6


def test_same_model_as_champion_is_not_an_improvement(trained: dict) -> None:
    result = gating.evaluate(trained["pipeline"], trained["good"], trained["holdout"], trained["good"], 1)
    assert result.challenger_score == result.champion_score
    assert not result.decision.promote


def test_single_class_holdout_gives_a_rejection_not_an_error(trained: dict) -> None:
    holdout = trained["holdout"]
    one_class = holdout[holdout["is_fraud"] == 0]
    result = gating.evaluate(trained["pipeline"], trained["good"], one_class, None, None)
    assert not result.decision.promote
    assert "cannot score" in result.decision.reason
    assert result.as_dict(trained["pipeline"].gate, "d", "u")["challenger_score"] is None


@pytest.mark.parametrize("metric", ["roc_auc", "accuracy", "f1", "log_loss"])
def test_warm_score_computes_the_gate_metric_of_a_classifier(metric: str) -> None:
    pipeline = make_pipeline()
    pipeline = pipeline.model_copy(update={"gate": pipeline.gate.model_copy(update={"metric": metric})})
    assert math.isfinite(gating.warm_score(pipeline))


def test_a_change_windows_weights_in_the_holdout_weigh_both_scores(trained: dict) -> None:
    pipeline, good, bad = trained["pipeline"], trained["good"], trained["bad"]
    holdout = trained["holdout"].copy()
    weights = np.random.default_rng(0).uniform(0.05, 1.0, len(holdout))
    holdout[SAMPLE_WEIGHT_COLUMN] = weights  # the run's training set carries them
    weighted = gating.evaluate(pipeline, good, holdout, bad, 1)
    plain = gating.evaluate(pipeline, good, trained["holdout"], bad, 1)
    y = holdout[pipeline.label_column].to_numpy().astype("int64")
    metric = pipeline.gate.metric
    assert weighted.challenger_score == pytest.approx(score(metric, y, good.predict(holdout), weights))
    assert weighted.champion_score == pytest.approx(score(metric, y, bad.predict(holdout), weights))
    assert abs(weighted.challenger_score - plain.challenger_score) > 1e-6
