"""How models are scored, the same way everywhere (training, the gate, the monitor): the fixed holdout split of a
dataset version and the metrics, computed with scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd

from driftloop.contracts.pipeline import PipelineConfig

# A column of a run's training set (the rows it trained and was scored on) that weighs its rows: a change window's
# recency weights. Training fits with them and the run and the gate score the holdout with them.
SAMPLE_WEIGHT_COLUMN = "_driftloop_sample_weight"


def holdout_mask(frame: pd.DataFrame, pipeline: PipelineConfig) -> np.ndarray:
    """Rows in the holdout: a seeded hash of (entity, event time), so the split is fixed per dataset version
    and the same row is in the same split for every run and for the gate."""
    stream, model = pipeline.stream, pipeline.model
    keys = (
        frame[stream.entity_key].astype(str)
        + "|"
        # In nanoseconds whatever the column's unit (pyarrow gives "us" for Spark's Parquet), so that every
        # reader of a feature set draws the same holdout.
        + pd.to_datetime(frame[stream.event_time], utc=True).dt.as_unit("ns").astype("int64").astype(str)
    )
    hashed = pd.util.hash_pandas_object(keys, index=False, hash_key=f"driftloop{model.seed:08d}"[:16])
    return (hashed.to_numpy() % 10_000) < int(model.holdout_fraction * 10_000)


def score(metric: str, y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """The gate metric. For classifiers ``y_pred`` is the positive-class probability. ``sample_weight``: per row
    (None: all weigh 1)."""
    from sklearn import metrics as m

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    w = None if sample_weight is None else np.asarray(sample_weight, dtype="float64")
    if metric == "roc_auc":
        return float(m.roc_auc_score(y_true, y_pred, sample_weight=w))
    if metric == "accuracy":
        return float(m.accuracy_score(y_true, y_pred >= 0.5, sample_weight=w))
    if metric == "f1":
        return float(m.f1_score(y_true, y_pred >= 0.5, sample_weight=w))
    if metric == "log_loss":
        return float(m.log_loss(y_true, np.clip(y_pred, 1e-9, 1 - 1e-9), labels=[0, 1], sample_weight=w))
    if metric == "rmse":
        return float(np.sqrt(m.mean_squared_error(y_true, y_pred, sample_weight=w)))
    if metric == "mae":
        return float(m.mean_absolute_error(y_true, y_pred, sample_weight=w))
    if metric == "r2":
        return float(m.r2_score(y_true, y_pred, sample_weight=w))
    raise ValueError(f"unknown metric {metric!r}")


def all_metrics(
    task: str, y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray | None = None
) -> dict[str, float]:
    names = ["roc_auc", "accuracy", "f1", "log_loss"] if task == "classification" else ["rmse", "mae", "r2"]
    out = {}
    for name in names:
        try:
            out[name] = score(name, y_true, y_pred, sample_weight)
        except ValueError:
            continue  # e.g. roc_auc on a single-class holdout
    return out
