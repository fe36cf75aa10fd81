"""The monitor's drift statistics: KS/chi-square per feature, multiple-testing correction, window decision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftloop.featuredefs import compute_features
from driftloop.pipeline import PipelineConfig, load_pipeline
from driftloop.services.monitor.stats import adjust_p_values, chi2_test, evaluate_window, ks_test

PIPELINE = load_pipeline(Path(__file__).resolve().parents[2] / "pipelines" / "transactions.yaml")
CATEGORIES = ["grocery", "travel", "electronics", "fashion", "gaming"]
BASE_PROBS = [0.4, 0.2, 0.15, 0.15, 0.1]


def raw_rows(
    n: int, rng: np.random.Generator, amount_scale: float = 1.0, probs: list[float] = BASE_PROBS
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in rng.integers(0, 500, n)],
            "amount": rng.lognormal(3.5, 1.0, n) * amount_scale,
            "age": rng.integers(18, 90, n),
            "hour": rng.integers(0, 24, n),
            "merchant_category": rng.choice(CATEGORIES, size=n, p=probs),
        }
    )


def features(raw: pd.DataFrame, pipeline: PipelineConfig = PIPELINE) -> pd.DataFrame:
    return compute_features(raw, pipeline, keep_keys=False)[pipeline.feature_names]


def with_monitor(**changes: object) -> PipelineConfig:
    return PIPELINE.model_copy(update={"monitor": PIPELINE.monitor.model_copy(update=changes)})


def test_same_distribution_gives_no_drift_over_many_windows() -> None:
    rng = np.random.default_rng(7)
    reference = features(raw_rows(3000, rng))
    drifted = [
        evaluate_window(reference, features(raw_rows(400, rng)), PIPELINE.features, PIPELINE.monitor).drifted
        for _ in range(200)
    ]
    # Bonferroni at alpha=0.01 bounds the false-alarm rate per window at 1% (about 2 in 200); a broken test or
    # correction (e.g. none: up to 5%) would alarm far more often.
    assert sum(drifted) <= 4


def test_shifted_numeric_feature_drifts_with_ks() -> None:
    rng = np.random.default_rng(11)
    reference = features(raw_rows(3000, rng))
    window = features(raw_rows(400, rng, amount_scale=1.6))
    result = evaluate_window(reference, window, PIPELINE.features, PIPELINE.monitor)
    assert result.drifted
    assert set(result.drifted_features) == {"amount", "log_amount"}
    by_feature = {t.feature: t for t in result.tests}
    assert by_feature["amount"].test == "ks"
    assert by_feature["amount"].adjusted_p_value < PIPELINE.monitor.alpha
    assert not by_feature["age"].drifted


def test_categorical_shift_drifts_with_chi2() -> None:
    rng = np.random.default_rng(3)
    reference = features(raw_rows(3000, rng))
    window = features(raw_rows(400, rng, probs=[0.1, 0.1, 0.1, 0.2, 0.5]))
    result = evaluate_window(reference, window, PIPELINE.features, PIPELINE.monitor)
    assert result.drifted
    assert result.drifted_features == ["merchant_category"]
    assert next(t for t in result.tests if t.feature == "merchant_category").test == "chi2"


def test_unseen_category_counts_as_drift() -> None:
    reference = ["grocery"] * 500 + ["travel"] * 500
    window = ["grocery"] * 150 + ["travel"] * 150 + ["crypto"] * 100
    statistic, p_value = chi2_test(reference, window)
    assert statistic > 0
    assert p_value < 1e-6


def test_missing_values_are_a_category() -> None:
    reference = ["grocery"] * 500 + ["travel"] * 500
    window = ["grocery"] * 100 + [None] * 200 + ["travel"] * 100
    assert chi2_test(reference, window)[1] < 1e-6


def test_single_category_or_empty_sides_are_no_evidence() -> None:
    assert chi2_test(["a"] * 10, ["a"] * 10) == (0.0, 1.0)
    assert ks_test([1.0, 2.0], [np.nan, np.inf]) == (0.0, 1.0)


def test_ks_ignores_missing_values() -> None:
    rng = np.random.default_rng(5)
    reference = rng.normal(0, 1, 1000)
    window = np.concatenate([rng.normal(0, 1, 300), [np.nan] * 50])
    statistic, p_value = ks_test(reference, window)
    assert p_value > 0.01
    assert 0 < statistic < 0.2


def test_bonferroni_and_holm_adjustments() -> None:
    p = [0.01, 0.04, 0.03]
    assert adjust_p_values(p, "bonferroni") == pytest.approx([0.03, 0.12, 0.09])
    # Holm: sorted 0.01*3, 0.03*2, 0.04*1 -> running max 0.03, 0.06, 0.06.
    assert adjust_p_values(p, "holm") == pytest.approx([0.03, 0.06, 0.06])
    assert adjust_p_values(p, "none") == pytest.approx(p)
    assert adjust_p_values([0.6, 0.9], "bonferroni") == [1.0, 1.0]


def test_correction_is_applied_to_the_window_decision() -> None:
    rng = np.random.default_rng(11)
    reference = features(raw_rows(3000, rng))
    window = features(raw_rows(400, rng, amount_scale=1.6))
    result = evaluate_window(reference, window, PIPELINE.features, PIPELINE.monitor)
    m = len(PIPELINE.features)
    for test in result.tests:
        assert test.adjusted_p_value == pytest.approx(min(1.0, test.p_value * m))
        assert test.drifted == (test.adjusted_p_value < PIPELINE.monitor.alpha)
    # A p-value just under alpha passes uncorrected but not after Bonferroni over 5 features.
    marginal = PIPELINE.monitor.alpha / 2
    assert adjust_p_values([marginal, 0.5, 0.5, 0.5, 0.5], "none")[0] < PIPELINE.monitor.alpha
    assert adjust_p_values([marginal, 0.5, 0.5, 0.5, 0.5], "bonferroni")[0] > PIPELINE.monitor.alpha


def test_min_drifted_features_must_be_reached() -> None:
    rng = np.random.default_rng(3)
    reference = features(raw_rows(3000, rng))
    window = features(raw_rows(400, rng, probs=[0.1, 0.1, 0.1, 0.2, 0.5]))
    spec = with_monitor(min_drifted_features=2).monitor
    result = evaluate_window(reference, window, PIPELINE.features, spec)
    assert result.drifted_features == ["merchant_category"]
    assert not result.drifted
