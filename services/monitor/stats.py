"""Drift statistics: one two-sample test per feature, then a multiple-testing correction, plus effect sizes.

Numeric features: Kolmogorov-Smirnov (``scipy.stats.ks_2samp``) and the Wasserstein distance in reference
standard deviations. Categorical features: chi-square on the reference vs window category counts
(``scipy.stats.chi2_contingency``), categories seen on either side included. Both: PSI (population stability
index; numeric on reference quantile bins). Performance metrics of labeled windows (scikit-learn's, as the gate) and
performance estimated from predicted probabilities without labels (CBPE). Pure functions on
pandas/numpy data: no Kafka, no database.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.exceptions import UndefinedMetricWarning

from driftloop.contracts import evaluation, payloads
from driftloop.contracts.pipeline import FeatureSpec, MonitorSpec, PredictionDriftSpec

Correction = Literal["bonferroni", "holm", "none"]

# Missing categorical values are a category of their own: a sudden rise of nulls is drift too.
MISSING_CATEGORY = "__missing__"


# PSI bins with no mass get this share, so that the logarithm stays finite.
PSI_EPSILON = 1e-4
# The fields of the DriftDetected event's FeatureTest and PredictionTest records (the rest stays in the reports).
EVENT_TEST_FIELDS = tuple(f.name for f in fields(payloads.FeatureTest))
EVENT_PREDICTION_TEST_FIELDS = tuple(f.name for f in fields(payloads.PredictionTest))


@dataclass(frozen=True)
class FeatureTest:
    feature: str
    test: str  # "ks" or "chi2"
    statistic: float
    p_value: float
    adjusted_p_value: float
    drifted: bool
    psi: float = 0.0
    # Numeric features only: Wasserstein distance divided by the reference standard deviation.
    wasserstein: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_event(self) -> payloads.FeatureTest:
        """The test as the DriftDetected event carries it."""
        return payloads.FeatureTest(**{name: getattr(self, name) for name in EVENT_TEST_FIELDS})


@dataclass(frozen=True)
class WindowResult:
    tests: list[FeatureTest]
    drifted: bool

    @property
    def drifted_features(self) -> list[str]:
        return [t.feature for t in self.tests if t.drifted]


def ks_test(reference: Sequence[float] | np.ndarray, window: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """KS statistic and p-value on the finite values of both samples; (0, 1) when a side has none."""
    ref = np.asarray(reference, dtype="float64")
    win = np.asarray(window, dtype="float64")
    ref = ref[np.isfinite(ref)]
    win = win[np.isfinite(win)]
    if ref.size == 0 or win.size == 0:
        return 0.0, 1.0
    result = stats.ks_2samp(ref, win)
    return float(result.statistic), float(result.pvalue)


def _category_counts(values: Sequence[Any] | pd.Series) -> pd.Series:
    series = pd.Series(values, dtype="object")
    series = series.where(series.notna(), MISSING_CATEGORY).astype(str)
    return series.value_counts()


def chi2_test(reference: Sequence[Any] | pd.Series, window: Sequence[Any] | pd.Series) -> tuple[float, float]:
    """Chi-square test of independence on a 2 x K table of category counts (reference row, window row).

    Categories seen only in the window (or only in the reference) are columns too, so new categories count
    as drift. With fewer than two categories overall there is nothing to compare: (0, 1).
    """
    table = pd.concat([_category_counts(reference), _category_counts(window)], axis=1).fillna(0)
    if table.shape[0] < 2 or table.iloc[:, 0].sum() == 0 or table.iloc[:, 1].sum() == 0:
        return 0.0, 1.0
    result = stats.chi2_contingency(table.to_numpy().T)
    return float(result.statistic), float(result.pvalue)


def wasserstein_scaled(reference: Sequence[float] | np.ndarray, window: Sequence[float] | np.ndarray) -> float:
    """Wasserstein-1 distance between the finite values, in reference standard deviations (scale-free, so one
    threshold fits every feature); 0 when a side has no values."""
    ref = np.asarray(reference, dtype="float64")
    win = np.asarray(window, dtype="float64")
    ref = ref[np.isfinite(ref)]
    win = win[np.isfinite(win)]
    if ref.size == 0 or win.size == 0:
        return 0.0
    scale = float(np.std(ref)) or 1.0
    return float(stats.wasserstein_distance(ref, win)) / scale


def _psi_from_shares(expected: np.ndarray, actual: np.ndarray) -> float:
    expected = np.clip(expected, PSI_EPSILON, None)
    actual = np.clip(actual, PSI_EPSILON, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi_numeric(reference: Sequence[float] | np.ndarray, window: Sequence[float] | np.ndarray, bins: int) -> float:
    """PSI on the reference's quantile bins (open-ended outer bins, so shifted values still land somewhere)."""
    ref = np.asarray(reference, dtype="float64")
    win = np.asarray(window, dtype="float64")
    ref = ref[np.isfinite(ref)]
    win = win[np.isfinite(win)]
    if ref.size == 0 or win.size == 0:
        return 0.0
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_counts = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1)
    win_counts = np.bincount(np.searchsorted(edges, win, side="right"), minlength=edges.size + 1)
    return _psi_from_shares(ref_counts / ref.size, win_counts / win.size)


def psi_categorical(reference: Sequence[Any] | pd.Series, window: Sequence[Any] | pd.Series) -> float:
    """PSI over the categories seen on either side (missing values are a category)."""
    table = pd.concat([_category_counts(reference), _category_counts(window)], axis=1).fillna(0).to_numpy()
    if table[:, 0].sum() == 0 or table[:, 1].sum() == 0:
        return 0.0
    return _psi_from_shares(table[:, 0] / table[:, 0].sum(), table[:, 1] / table[:, 1].sum())


def adjust_p_values(p_values: Sequence[float], method: Correction) -> list[float]:
    """Family-wise error correction: Bonferroni (p * m) or Holm's step-down; ``none`` leaves them as they are."""
    p = np.asarray(p_values, dtype="float64")
    m = p.size
    if m == 0 or method == "none":
        return [float(x) for x in p]
    if method == "bonferroni":
        return [float(x) for x in np.minimum(p * m, 1.0)]
    if method == "holm":
        order = np.argsort(p)
        # The i-th smallest p-value (0-based) is multiplied by m - i; monotone by a running maximum.
        stepped = np.maximum.accumulate(np.minimum(p[order] * (m - np.arange(m)), 1.0))
        adjusted = np.empty(m)
        adjusted[order] = stepped
        return [float(x) for x in adjusted]
    raise ValueError(f"unknown correction {method!r}: use bonferroni, holm or none")


def evaluate_window(
    reference: pd.DataFrame, window: pd.DataFrame, features: Sequence[FeatureSpec], spec: MonitorSpec
) -> WindowResult:
    """Test every feature of ``window`` against ``reference``; a feature drifts when its corrected p-value is
    below ``alpha`` and its effect sizes pass the thresholds that are set (``psi_threshold``,
    ``wasserstein_threshold``); the window drifts when at least ``min_drifted_features`` features do."""
    raw: list[tuple[str, str, float, float, float, float | None]] = []
    for feature in features:
        if feature.kind == "numeric":
            ref, win = reference[feature.name].to_numpy(), window[feature.name].to_numpy()
            statistic, p_value = ks_test(ref, win)
            psi = psi_numeric(ref, win, spec.psi_bins)
            raw.append((feature.name, "ks", statistic, p_value, psi, wasserstein_scaled(ref, win)))
        else:
            statistic, p_value = chi2_test(reference[feature.name], window[feature.name])
            raw.append(
                (
                    feature.name,
                    "chi2",
                    statistic,
                    p_value,
                    psi_categorical(reference[feature.name], window[feature.name]),
                    None,
                )
            )
    adjusted = adjust_p_values([r[3] for r in raw], spec.correction)
    tests = [
        FeatureTest(
            feature=name,
            test=test,
            statistic=statistic,
            p_value=p_value,
            adjusted_p_value=adj,
            drifted=_feature_drifted(adj, psi, wasserstein, spec),
            psi=psi,
            wasserstein=wasserstein,
        )
        for (name, test, statistic, p_value, psi, wasserstein), adj in zip(raw, adjusted, strict=True)
    ]
    drifted = sum(t.drifted for t in tests) >= spec.min_drifted_features
    return WindowResult(tests=tests, drifted=drifted)


# The shift is located to within this many rows of a window, with at least this many rows after it.
SHIFT_STEP_ROWS = 5
SHIFT_MIN_ROWS_AFTER = 20


def locate_shift(
    reference: pd.DataFrame, window: pd.DataFrame, features: Sequence[FeatureSpec], drifted: Sequence[str]
) -> int:
    """Where in a drifted window its shift most likely began: the window row ``k`` that best separates the reference
    and the window's rows before ``k`` from its rows from ``k`` on, by the drifted features' two-sample distance
    (KS for numeric features, total variation for categorical ones) weighted by ``sqrt(n_before * n_after / n)``,
    the usual nonparametric change-point estimate. A window that began changed gives 0; a shift in its middle gives
    a row near it, so that training waits for rows after the shift, not for rows after the window's start (which
    would mix the old distribution into the model and into its reference)."""
    names = [f for f in features if f.name in set(drifted) and f.name in window and f.name in reference]
    size = len(window)
    if not names or size <= SHIFT_MIN_ROWS_AFTER:
        return 0
    splits = np.arange(0, size - SHIFT_MIN_ROWS_AFTER + 1, SHIFT_STEP_ROWS)
    score = np.zeros(splits.size)
    for feature in names:
        if feature.kind == "numeric":
            score += _split_ks(reference[feature.name].to_numpy(), window[feature.name].to_numpy(), splits)
        else:
            score += _split_total_variation(reference[feature.name], window[feature.name], splits)
    return int(splits[int(np.argmax(score))])


def _split_ks(reference: np.ndarray, window: np.ndarray, splits: np.ndarray) -> np.ndarray:
    ref = np.asarray(reference, dtype="float64")
    win = np.asarray(window, dtype="float64")
    ref = np.sort(ref[np.isfinite(ref)])
    out = np.zeros(splits.size)
    if ref.size == 0:
        return out
    grid = np.unique(np.concatenate([ref, win[np.isfinite(win)]]))
    ref_counts = np.searchsorted(ref, grid, side="right")
    for j, k in enumerate(splits):
        head, tail = win[:k], win[k:]
        head, tail = np.sort(head[np.isfinite(head)]), np.sort(tail[np.isfinite(tail)])
        if tail.size == 0:
            continue
        before_n = ref.size + head.size
        before = (ref_counts + np.searchsorted(head, grid, side="right")) / before_n
        after = np.searchsorted(tail, grid, side="right") / tail.size
        out[j] = np.max(np.abs(before - after)) * np.sqrt(before_n * tail.size / (before_n + tail.size))
    return out


def _split_total_variation(reference: pd.Series, window: pd.Series, splits: np.ndarray) -> np.ndarray:
    ref = _category_counts(reference)
    win = pd.Series(window, dtype="object")
    win = win.where(win.notna(), MISSING_CATEGORY).astype(str).to_numpy()
    categories = sorted(set(ref.index) | set(win))
    column = {c: i for i, c in enumerate(categories)}
    ref_counts = np.zeros(len(categories))
    for category, count in ref.items():
        ref_counts[column[category]] = count
    onehot = np.zeros((win.size, len(categories)))
    onehot[np.arange(win.size), [column[c] for c in win]] = 1
    prefix = np.vstack([np.zeros(len(categories)), np.cumsum(onehot, axis=0)])
    out = np.zeros(splits.size)
    for j, k in enumerate(splits):
        before_n, after_n = ref_counts.sum() + k, win.size - k
        before = (ref_counts + prefix[k]) / before_n
        after = (prefix[-1] - prefix[k]) / after_n
        out[j] = 0.5 * np.abs(before - after).sum() * np.sqrt(before_n * after_n / (before_n + after_n))
    return out


def _feature_drifted(adjusted_p_value: float, psi: float, wasserstein: float | None, spec: MonitorSpec) -> bool:
    if adjusted_p_value >= spec.alpha:
        return False
    if spec.psi_threshold is not None and psi <= spec.psi_threshold:
        return False
    return not (
        spec.wasserstein_threshold is not None and wasserstein is not None and wasserstein <= spec.wasserstein_threshold
    )


def prediction_test(
    baseline: Sequence[float] | np.ndarray, window: Sequence[float] | np.ndarray, alpha: float
) -> dict[str, Any]:
    """Prediction drift: KS, PSI and Wasserstein of the window's predictions against a baseline window's."""
    statistic, p_value = ks_test(baseline, window)
    return {
        "test": "ks",
        "statistic": statistic,
        "p_value": p_value,
        "psi": psi_numeric(baseline, window, 10),
        "wasserstein": wasserstein_scaled(baseline, window),
        "drifted": p_value < alpha,
    }


def event_prediction_test(test: dict[str, Any]) -> payloads.PredictionTest:
    """A ``prediction_test`` result as the DriftDetected event carries it."""
    return payloads.PredictionTest(**{name: test[name] for name in EVENT_PREDICTION_TEST_FIELDS})


def prediction_drift_alarms(test: dict[str, Any], spec: PredictionDriftSpec, monitor_alpha: float) -> bool:
    """Whether a window's prediction test (``prediction_test``) is an alarm: enabled, KS p-value below
    ``spec.alpha`` (default: the monitor's alpha), and PSI / Wasserstein above the thresholds that are set."""
    if not spec.enabled:
        return False
    alpha = monitor_alpha if spec.alpha is None else spec.alpha
    if not test["p_value"] < alpha:
        return False
    if spec.psi_threshold is not None and not test["psi"] > spec.psi_threshold:
        return False
    return not (spec.wasserstein_threshold is not None and not test["wasserstein"] > spec.wasserstein_threshold)


MAXIMIZED_METRICS = frozenset({"roc_auc", "accuracy", "f1"})


def performance_metrics(
    actual: Sequence[float] | np.ndarray, predicted: Sequence[float] | np.ndarray, task: str, decision_threshold: float
) -> dict[str, float | None]:
    """Every metric of the task on a labeled window, by the one implementation the gate uses
    (``driftloop.contracts.evaluation.score``, scikit-learn's). Classification: ``predicted`` is the positive-class
    probability, a positive label at or above ``decision_threshold`` (accuracy, F1; F1 is 0 on a window without
    positives, as scikit-learn has it); AUC is None when the window holds one class only. Regression: RMSE, MAE."""
    y = np.asarray(actual, dtype="float64")
    p = np.asarray(predicted, dtype="float64")
    if task == "regression":
        return {"rmse": evaluation.score("rmse", y, p), "mae": evaluation.score("mae", y, p)}
    truth = (y >= 0.5).astype("int64")
    # 1.0 / 0.0 as "probabilities": score() labels them at 0.5, so the decision threshold is applied once, here.
    labels = (p >= decision_threshold).astype("float64")
    with warnings.catch_warnings():
        # No positive label and none predicted: scikit-learn's F1 is 0 (and it warns about it).
        warnings.simplefilter("ignore", category=UndefinedMetricWarning)
        f1 = evaluation.score("f1", truth, labels)
    auc = evaluation.score("roc_auc", truth, p) if 0 < truth.sum() < truth.size else None
    return {"accuracy": evaluation.score("accuracy", truth, labels), "f1": f1, "roc_auc": auc}


def estimate_performance(
    probabilities: Sequence[float] | np.ndarray, metric: str, decision_threshold: float = 0.5
) -> float | None:
    """Confidence-based performance estimation (as NannyML's CBPE): the metric a calibrated classifier is
    expected to reach on a window, from its predicted probabilities alone (no labels). Each prediction is a
    positive with probability ``p``: expected accuracy is the mean of ``p`` (predicted positive) or ``1 - p``;
    expected AUC is the expected share of (positive, negative) pairs ranked in order, ties counting half.
    None on an empty window."""
    p = np.clip(np.asarray(probabilities, dtype="float64"), 0.0, 1.0)
    p = p[np.isfinite(p)]
    if p.size == 0:
        return None
    if metric == "accuracy":
        return float(np.mean(np.where(p >= decision_threshold, p, 1.0 - p)))
    if metric != "roc_auc":
        raise ValueError(f"no estimate of {metric!r}: use roc_auc or accuracy")
    ordered = np.sort(p)
    _, starts = np.unique(ordered, return_index=True)
    positives = np.add.reduceat(ordered, starts)  # expected positives per tied score
    negatives = np.add.reduceat(1.0 - ordered, starts)
    self_pairs = np.add.reduceat(ordered * (1.0 - ordered), starts)  # a row is not paired with itself
    negatives_below = np.cumsum(negatives) - negatives
    in_order = float(np.sum(positives * negatives_below) + 0.5 * np.sum(positives * negatives - self_pairs))
    pairs = float(p.sum() * (1.0 - p).sum() - np.sum(p * (1.0 - p)))
    return in_order / pairs if pairs > 0 else None


def is_degraded(metric: str, value: float | None, threshold: float | None) -> bool:
    """Below the threshold for accuracy/F1/AUC, above it for RMSE/MAE; never without a value or threshold."""
    if value is None or threshold is None:
        return False
    return value < threshold if metric in MAXIMIZED_METRICS else value > threshold
