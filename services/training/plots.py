"""A run's plots as PNG bytes: feature importance always; confusion matrix and ROC curve for classifiers."""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def _png(figure: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buf, format="png", dpi=80)
    plt.close(figure)
    return buf.getvalue()


def draw_plots(task: str, importance: dict[str, float], y_true: np.ndarray, y_score: np.ndarray) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server or a Ray worker
    import matplotlib.pyplot as plt

    plots: dict[str, bytes] = {}
    names = sorted(importance, key=importance.__getitem__)
    figure, axes = plt.subplots(figsize=(6, 0.4 * len(names) + 1.2))
    axes.barh(names, [importance[n] for n in names])
    axes.set_xlabel("share of importance")
    axes.set_title("Feature importance")
    plots["feature_importance.png"] = _png(figure)
    if task != "classification":
        return plots

    from sklearn.metrics import confusion_matrix, roc_curve

    matrix = confusion_matrix(y_true, y_score >= 0.5, labels=[0, 1])
    figure, axes = plt.subplots(figsize=(4, 4))
    axes.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        axes.text(col, row, str(count), ha="center", va="center")
    axes.set_xticks([0, 1], ["0", "1"])
    axes.set_yticks([0, 1], ["0", "1"])
    axes.set_xlabel("predicted (p >= 0.5)")
    axes.set_ylabel("actual")
    axes.set_title("Confusion matrix (holdout)")
    plots["confusion_matrix.png"] = _png(figure)

    if len(np.unique(y_true)) == 2:
        false_positive, true_positive, _ = roc_curve(y_true, y_score)
        figure, axes = plt.subplots(figsize=(4, 4))
        axes.plot(false_positive, true_positive)
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey")
        axes.set_xlabel("false positive rate")
        axes.set_ylabel("true positive rate")
        axes.set_title("ROC (holdout)")
        plots["roc.png"] = _png(figure)
    return plots
