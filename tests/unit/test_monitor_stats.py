"""The monitor's drift statistics: KS/chi-square per feature, multiple-testing correction, window decision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftloop.contracts.featuredefs import compute_features
from driftloop.contracts.pipeline import PipelineConfig, load_pipeline
from driftloop.services.monitor.stats import (
    adjust_p_values,
    chi2_test,
    evaluate_window,
    is_degraded,
    ks_test,
    locate_shift,
    performance_metrics,
    psi_categorical,
    psi_numeric,
    wasserstein_scaled,
)

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


@pytest.mark.parametrize("shift", [0, 100, 250, 330])
def test_a_drifted_window_locates_where_its_shift_began(shift: int) -> None:
    rng = np.random.default_rng(shift + 1)
    reference = features(raw_rows(3000, rng))
    before = raw_rows(shift, rng)
    after = raw_rows(400 - shift, rng, amount_scale=3.0, probs=[0.1, 0.1, 0.1, 0.2, 0.5])
    window = features(pd.concat([before, after], ignore_index=True))
    located = locate_shift(reference, window, PIPELINE.features, ["amount", "log_amount", "merchant_category"])
    assert abs(located - shift) <= 20, located
    # Each kind of feature on its own finds it too.
    assert abs(locate_shift(reference, window, PIPELINE.features, ["amount"]) - shift) <= 30
    assert abs(locate_shift(reference, window, PIPELINE.features, ["merchant_category"]) - shift) <= 30


def test_a_window_without_drifted_features_has_no_shift_inside() -> None:
    rng = np.random.default_rng(5)
    reference = features(raw_rows(3000, rng))
    window = features(raw_rows(400, rng))
    assert locate_shift(reference, window, PIPELINE.features, []) == 0
    assert locate_shift(reference, window.iloc[:10], PIPELINE.features, ["amount"]) == 0  # too short to split


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


def test_psi_and_wasserstein_are_small_on_the_same_distribution_and_large_on_a_shift() -> None:
    rng = np.random.default_rng(3)
    reference = rng.normal(10, 2, 5000)
    same = rng.normal(10, 2, 1000)
    shifted = rng.normal(12, 2, 1000)
    assert psi_numeric(reference, same, 10) < 0.05
    assert psi_numeric(reference, shifted, 10) > 0.25
    # In reference standard deviations: a one-sigma shift is about 1, whatever the unit.
    assert wasserstein_scaled(reference, same) < 0.15
    assert 0.8 < wasserstein_scaled(reference, shifted) < 1.2
    assert wasserstein_scaled(reference * 1000, shifted * 1000) == pytest.approx(wasserstein_scaled(reference, shifted))
    cats = ["a", "b", "c"]
    assert psi_categorical(rng.choice(cats, 3000), rng.choice(cats, 1000)) < 0.05
    assert psi_categorical(rng.choice(cats, 3000), rng.choice(cats, 1000, p=[0.7, 0.2, 0.1])) > 0.2


def test_effect_size_thresholds_gate_significant_but_tiny_shifts() -> None:
    rng = np.random.default_rng(5)
    reference = features(raw_rows(3000, rng))
    window = features(raw_rows(400, rng, amount_scale=1.6))
    plain = evaluate_window(reference, window, PIPELINE.features, PIPELINE.monitor)
    assert "amount" in plain.drifted_features
    amount = next(t for t in plain.tests if t.feature == "amount")
    assert amount.psi > 0 and amount.wasserstein is not None and amount.wasserstein > 0
    strict = with_monitor(psi_threshold=amount.psi + 1.0)
    assert "amount" not in evaluate_window(reference, window, strict.features, strict.monitor).drifted_features
    loose = with_monitor(psi_threshold=amount.psi / 2, wasserstein_threshold=amount.wasserstein / 2)
    assert "amount" in evaluate_window(reference, window, loose.features, loose.monitor).drifted_features


def test_long_stream_from_the_reference_distribution_never_alarms_with_an_effect_size_threshold() -> None:
    rng = np.random.default_rng(17)
    reference = features(raw_rows(3000, rng))
    pipeline = with_monitor(psi_threshold=0.1)
    alarms = [
        evaluate_window(reference, features(raw_rows(400, rng)), pipeline.features, pipeline.monitor).drifted
        for _ in range(60)
    ]
    assert sum(alarms) == 0


def test_performance_metrics_classification_and_regression() -> None:
    actual = [0, 0, 1, 1]
    values = performance_metrics(actual, [0.1, 0.6, 0.4, 0.9], "classification", 0.5)
    assert values["accuracy"] == pytest.approx(0.5)
    assert values["f1"] == pytest.approx(0.5)
    assert values["roc_auc"] == pytest.approx(0.75)
    assert performance_metrics([1, 1], [0.2, 0.9], "classification", 0.5)["roc_auc"] is None
    regression = performance_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 5.0], "regression", 0.5)
    assert regression["mae"] == pytest.approx(2 / 3)
    assert regression["rmse"] == pytest.approx((4 / 3) ** 0.5)
    assert is_degraded("roc_auc", 0.6, 0.7) and not is_degraded("roc_auc", 0.8, 0.7)
    assert is_degraded("rmse", 2.0, 1.5) and not is_degraded("rmse", 1.0, 1.5)
    assert not is_degraded("roc_auc", None, 0.7) and not is_degraded("roc_auc", 0.1, None)


def test_performance_metrics_are_the_gates_scikit_learn_metrics() -> None:
    """One implementation: a window without positives, none predicted, has F1 0 (scikit-learn), not 1."""
    from driftloop.contracts.evaluation import score
    from driftloop.services.monitor.stats import performance_metrics

    values = performance_metrics([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], "classification", 0.5)
    assert values == {"accuracy": 1.0, "f1": 0.0, "roc_auc": None}
    rng = np.random.default_rng(3)
    y, p = (rng.uniform(size=300) < 0.4).astype(float), rng.uniform(size=300)
    values = performance_metrics(y, p, "classification", 0.5)
    assert values["roc_auc"] == score("roc_auc", y, p)
    assert values["f1"] == score("f1", y, p)


def test_estimated_performance_matches_measured_on_calibrated_probabilities() -> None:
    from sklearn.metrics import accuracy_score, roc_auc_score

    from driftloop.services.monitor.stats import estimate_performance

    rng = np.random.default_rng(4)
    p = rng.beta(0.7, 0.7, size=20_000)
    y = rng.uniform(size=p.size) < p  # calibrated: a positive with probability p
    assert estimate_performance(p, "roc_auc") == pytest.approx(roc_auc_score(y, p), abs=0.01)
    assert estimate_performance(p, "accuracy") == pytest.approx(accuracy_score(y, p >= 0.5), abs=0.01)
    # Unsure predictions: an estimate near chance, from the probabilities alone.
    assert estimate_performance(np.full(100, 0.5), "roc_auc") == pytest.approx(0.5)
    assert estimate_performance([], "roc_auc") is None
