"""The model artifact contract shared by training (writes), registry (gates) and serving (predicts):
a zip with ``meta.json`` and the native model file, verified by sha256 before it is loaded."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from driftloop.errors import DriftloopError
from driftloop.pipeline import PipelineConfig

ARTIFACT_FORMAT = "driftloop-model/1"


class ArtifactError(DriftloopError):
    """A model artifact is unreadable or does not match its recorded sha256."""


@dataclass
class ModelArtifact:
    family: str
    task: str
    feature_names: list[str]
    categories: dict[str, list[str]]
    model: Any  # lightgbm.Booster
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def matrix(self, features: pd.DataFrame) -> pd.DataFrame:
        """The model's input matrix: its features in order, categoricals with the training vocabulary."""
        x = features.reindex(columns=self.feature_names).copy()
        for name, cats in self.categories.items():
            x[name] = pd.Categorical(x[name].astype("object"), categories=cats)
        for name in self.feature_names:
            if name not in self.categories:
                x[name] = pd.to_numeric(x[name], errors="coerce").astype("float64")
        return x

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        """Classification: probability of the positive class. Regression: the predicted value."""
        return np.asarray(self.model.predict(self.matrix(features)), dtype="float64")

    def to_bytes(self) -> bytes:
        meta = {
            "format": ARTIFACT_FORMAT,
            "family": self.family,
            "task": self.task,
            "feature_names": self.feature_names,
            "categories": self.categories,
            "params": self.params,
            "metadata": self.metadata,
        }
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("meta.json", json.dumps(meta, indent=2, sort_keys=True, default=str))
            zf.writestr("model.txt", self.model.model_to_string())
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, expected_sha256: str | None = None) -> ModelArtifact:
        if expected_sha256 is not None:
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected_sha256:
                raise ArtifactError(
                    f"artifact sha256 {actual} does not match the recorded {expected_sha256}: refusing it"
                )
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                meta = json.loads(zf.read("meta.json"))
                model_text = zf.read("model.txt").decode()
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"not a driftloop model artifact: {exc}") from exc
        if meta.get("format") != ARTIFACT_FORMAT:
            raise ArtifactError(f"unsupported artifact format {meta.get('format')!r}")
        if meta["family"] != "lightgbm":
            raise ArtifactError(f"unsupported model family {meta['family']!r}")
        import lightgbm as lgb

        return cls(
            family=meta["family"],
            task=meta["task"],
            feature_names=meta["feature_names"],
            categories=meta["categories"],
            model=lgb.Booster(model_str=model_text),
            params=meta.get("params", {}),
            metadata=meta.get("metadata", {}),
        )


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


def score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The gate metric. For classifiers ``y_pred`` is the positive-class probability."""
    from sklearn import metrics as m

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if metric == "roc_auc":
        return float(m.roc_auc_score(y_true, y_pred))
    if metric == "accuracy":
        return float(m.accuracy_score(y_true, y_pred >= 0.5))
    if metric == "f1":
        return float(m.f1_score(y_true, y_pred >= 0.5))
    if metric == "log_loss":
        return float(m.log_loss(y_true, np.clip(y_pred, 1e-9, 1 - 1e-9), labels=[0, 1]))
    if metric == "rmse":
        return float(np.sqrt(m.mean_squared_error(y_true, y_pred)))
    if metric == "mae":
        return float(m.mean_absolute_error(y_true, y_pred))
    if metric == "r2":
        return float(m.r2_score(y_true, y_pred))
    raise ValueError(f"unknown metric {metric!r}")


def all_metrics(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    names = ["roc_auc", "accuracy", "f1", "log_loss"] if task == "classification" else ["rmse", "mae", "r2"]
    out = {}
    for name in names:
        try:
            out[name] = score(name, y_true, y_pred)
        except ValueError:
            continue  # e.g. roc_auc on a single-class holdout
    return out
