"""Drift statistics: one two-sample test per feature, then a multiple-testing correction.

Numeric features: Kolmogorov-Smirnov (``scipy.stats.ks_2samp``). Categorical features: chi-square on the
reference vs window category counts (``scipy.stats.chi2_contingency``), categories seen on either side included.
Pure functions on pandas/numpy data: no Kafka, no database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from driftloop.pipeline import FeatureSpec, MonitorSpec

Correction = Literal["bonferroni", "holm", "none"]

# Missing categorical values are a category of their own: a sudden rise of nulls is drift too.
MISSING_CATEGORY = "__missing__"


@dataclass(frozen=True)
class FeatureTest:
    feature: str
    test: str  # "ks" or "chi2"
    statistic: float
    p_value: float
    adjusted_p_value: float
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    """Test every feature of ``window`` against ``reference``; drift when at least ``min_drifted_features``
    features have a corrected p-value below ``alpha``."""
    raw: list[tuple[str, str, float, float]] = []
    for feature in features:
        if feature.kind == "numeric":
            statistic, p_value = ks_test(reference[feature.name].to_numpy(), window[feature.name].to_numpy())
            raw.append((feature.name, "ks", statistic, p_value))
        else:
            statistic, p_value = chi2_test(reference[feature.name], window[feature.name])
            raw.append((feature.name, "chi2", statistic, p_value))
    adjusted = adjust_p_values([r[3] for r in raw], spec.correction)
    tests = [
        FeatureTest(
            feature=name,
            test=test,
            statistic=statistic,
            p_value=p_value,
            adjusted_p_value=adj,
            drifted=adj < spec.alpha,
        )
        for (name, test, statistic, p_value), adj in zip(raw, adjusted, strict=True)
    ]
    drifted = sum(t.drifted for t in tests) >= spec.min_drifted_features
    return WindowResult(tests=tests, drifted=drifted)
