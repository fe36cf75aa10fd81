"""The promotion gate: challenger and champion scored with the pipeline's gate metric on the SAME holdout rows
of the challenger's feature set, and a decision that is a pure function of the two scores and the gate config."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from driftloop.clients.objectstore import ObjectStore
from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.evaluation import SAMPLE_WEIGHT_COLUMN, holdout_mask, score
from driftloop.contracts.pipeline import GateSpec, PipelineConfig
from driftloop.errors import NotFoundError, ValidationFailed

# Float noise must not turn "exactly min_improvement better" into a rejection.
_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    # Challenger minus champion, signed so that positive is better (None without a champion).
    margin: float | None


def decide(gate: GateSpec, challenger_score: float, champion_score: float | None) -> Decision:
    """Promote a challenger that beats the champion by ``min_improvement`` in the gate's direction; without a
    champion, promote if the score passes ``first_version_threshold`` (always, when no threshold is set). A
    challenger missing the absolute ``floor`` is never promoted."""
    if not math.isfinite(challenger_score):
        return Decision(False, f"challenger {gate.metric} is not a number ({challenger_score})", None)
    maximize = gate.direction == "maximize"
    if gate.floor is not None:
        passes_floor = (
            challenger_score >= gate.floor - _TOLERANCE if maximize else challenger_score <= gate.floor + _TOLERANCE
        )
        if not passes_floor:
            relation = ">=" if maximize else "<="
            return Decision(
                False, f"{gate.metric}={challenger_score:.6g} misses the absolute floor {relation} {gate.floor:g}", None
            )
    if champion_score is None or not math.isfinite(champion_score):
        threshold = gate.first_version_threshold
        if threshold is None:
            return Decision(True, f"no champion to compare; {gate.metric}={challenger_score:.6g}", None)
        passes = challenger_score >= threshold - _TOLERANCE if maximize else challenger_score <= threshold + _TOLERANCE
        relation = ">=" if maximize else "<="
        if passes:
            return Decision(
                True, f"no champion; {gate.metric}={challenger_score:.6g} {relation} threshold {threshold:g}", None
            )
        return Decision(
            False, f"no champion; {gate.metric}={challenger_score:.6g} fails threshold {relation} {threshold:g}", None
        )
    margin = challenger_score - champion_score if maximize else champion_score - challenger_score
    needed = gate.min_improvement
    better = margin > _TOLERANCE and margin >= needed - _TOLERANCE
    summary = (
        f"{gate.metric} challenger {challenger_score:.6g} vs champion {champion_score:.6g} "
        f"({gate.direction}): margin {margin:+.6g}, needed >= {needed:g}"
    )
    return Decision(better, ("better: " if better else "not better: ") + summary, margin)


def read_feature_set(store: ObjectStore, feature_set_uri: str) -> pd.DataFrame:
    """The feature set behind ``feature_set_uri``: one Parquet file or a folder (prefix) of Parquet files."""
    key = store.key_of(feature_set_uri).rstrip("/")
    filesystem, root = store.arrow_filesystem()
    path = f"{root.rstrip('/')}/{key}"
    try:
        dataset = pads.dataset(path, filesystem=filesystem, format="parquet")
        return dataset.to_table().to_pandas()
    except FileNotFoundError:
        raise NotFoundError(f"feature set {feature_set_uri} does not exist") from None


def holdout_rows(features: pd.DataFrame, pipeline: PipelineConfig) -> pd.DataFrame:
    """The holdout rows with a label (the gate cannot score unlabelled rows)."""
    stream = pipeline.stream
    for column in (stream.entity_key, stream.event_time, pipeline.label_column):
        if column not in features.columns:
            raise NotFoundError(f"the feature set has no column {column!r}; columns: {sorted(features.columns)}")
    holdout = features[holdout_mask(features, pipeline)]
    return holdout[holdout[pipeline.label_column].notna()]


def warm_score(pipeline: PipelineConfig) -> float:
    """The gate's metric on four made-up rows: its library imported before the first gate needs it."""
    classification = pipeline.model.task == "classification"
    y_true = np.array([0, 1, 0, 1] if classification else [1.0, 2.0, 3.0, 4.0])
    y_pred = np.array([0.2, 0.8, 0.4, 0.6] if classification else [1.5, 2.0, 2.5, 4.0])
    return float(score(pipeline.gate.metric, y_true, y_pred))


def score_on(artifact: ModelArtifact, holdout: pd.DataFrame, pipeline: PipelineConfig, metric: str) -> float:
    y_true = holdout[pipeline.label_column].to_numpy()
    if pipeline.model.task == "classification":
        y_true = y_true.astype("int64")
    try:
        y_pred = artifact.predict(holdout)
    except ValidationFailed as exc:  # holdout rows the model cannot score (not finite, beyond its input type)
        raise ValueError(str(exc)) from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns and returns NaN where the metric is undefined
        # A change window's weights (the run's training set carries them): scored as the run scored its holdout.
        weights = holdout[SAMPLE_WEIGHT_COLUMN].to_numpy(dtype="float64") if SAMPLE_WEIGHT_COLUMN in holdout else None
        value = float(score(metric, np.asarray(y_true), y_pred, weights))
    if not math.isfinite(value):
        raise ValueError(f"{metric} is undefined on these {len(holdout)} holdout rows (only one class?)")
    return value


@dataclass(frozen=True)
class GateResult:
    decision: Decision
    challenger_score: float
    champion_score: float | None
    champion_version: int | None
    holdout_rows: int
    notes: list[str]

    def as_dict(self, gate: GateSpec, dataset_version_id: str, feature_set_uri: str) -> dict[str, Any]:
        """The numbers stored with the version and sent as ``gate_json`` (JSON-safe: no NaN)."""

        def finite(value: float | None) -> float | None:
            return value if value is not None and math.isfinite(value) else None

        return {
            "metric": gate.metric,
            "direction": gate.direction,
            "min_improvement": gate.min_improvement,
            "first_version_threshold": gate.first_version_threshold,
            "floor": gate.floor,
            "challenger_score": finite(self.challenger_score),
            "champion_score": finite(self.champion_score),
            "champion_version": self.champion_version,
            "margin": finite(self.decision.margin),
            "holdout_rows": self.holdout_rows,
            "dataset_version_id": dataset_version_id,
            "feature_set_uri": feature_set_uri,
            "decision": "promoted" if self.decision.promote else "rejected",
            "reason": self.decision.reason,
            "notes": self.notes,
        }


def evaluate(
    pipeline: PipelineConfig,
    challenger: ModelArtifact,
    holdout: pd.DataFrame,
    champion: ModelArtifact | None,
    champion_version: int | None,
) -> GateResult:
    """Score both models on the same holdout rows and decide."""
    gate = pipeline.gate
    notes: list[str] = []
    if holdout.empty:
        decision = Decision(False, "the challenger's feature set has no labelled holdout rows to score", None)
        return GateResult(decision, math.nan, None, champion_version, 0, notes)
    try:
        challenger_score = score_on(challenger, holdout, pipeline, gate.metric)
    except ValueError as exc:  # e.g. roc_auc on a single-class holdout
        decision = Decision(False, f"cannot score the challenger with {gate.metric}: {exc}", None)
        return GateResult(decision, math.nan, None, champion_version, len(holdout), notes)
    champion_score: float | None = None
    if champion is not None:
        try:
            champion_score = score_on(champion, holdout, pipeline, gate.metric)
        except ValueError as exc:
            notes.append(f"champion v{champion_version} could not be scored: {exc}")
    decision = decide(gate, challenger_score, champion_score)
    return GateResult(decision, challenger_score, champion_score, champion_version, len(holdout), notes)
