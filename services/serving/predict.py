"""Predictions: validate the raw instances, compute features with the one offline/online feature function (or
its pandas-free twin, ``encode``), and score with the served model. Logging is ``predlog``'s, off the hot path."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import Counter, Histogram

from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.featuredefs import features_from_instances
from driftloop.errors import ValidationFailed

from .served import ServedModel

_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1

PREDICTIONS = Counter("driftloop_serving_predictions_total", "Predicted rows", ["model", "version"])
PREDICT_SECONDS = Histogram("driftloop_serving_predict_seconds", "Predict request time", ["model"])


_SCALARS = frozenset({type(None), bool, str, int, float})


def check_scalars(instances: list[dict[str, Any]]) -> None:
    """Instance values must be JSON scalars that fit the PredictionLogged inputs map. The request's values are
    checked together (their types as a set, the floats' sum finite, the ints' extremes in range: a few C loops);
    only a request that fails that is walked value by value, for the error naming the first culprit."""
    values = [value for instance in instances for value in instance.values()]
    kinds = set(map(type, values))
    if kinds <= _SCALARS:
        floats = values if kinds == {float} else [v for v in values if type(v) is float] if float in kinds else []
        ints = [v for v in values if type(v) is int] if int in kinds else []
        # A sum of finite floats is finite unless it overflows (then the walk below finds nothing wrong).
        if math.isfinite(sum(floats)) and (not ints or (min(ints) >= _LONG_MIN and max(ints) <= _LONG_MAX)):
            return
    _check_each_scalar(instances)


def _check_each_scalar(instances: list[dict[str, Any]]) -> None:
    for i, instance in enumerate(instances):
        for name, value in instance.items():
            if value is None or isinstance(value, bool | str):
                continue
            if isinstance(value, int):
                if not _LONG_MIN <= value <= _LONG_MAX:
                    raise ValidationFailed("out_of_range", name, f"instances[{i}].{name} does not fit in 64 bits")
                continue
            if isinstance(value, float):
                if not math.isfinite(value):
                    raise ValidationFailed("not_finite", name, f"instances[{i}].{name} must be finite, got {value}")
                continue
            raise ValidationFailed(
                "not_a_scalar", name, f"instances[{i}].{name} must be a string, number, boolean or null"
            )


# Below this many rows one thread scores faster than LightGBM's OpenMP pool (which also contends with the
# request threads): about 4x on one row on 2 cores.
SINGLE_THREAD_MAX_ROWS = 1000


def score(artifact: ModelArtifact, features: pd.DataFrame) -> np.ndarray:
    if artifact.family == "lightgbm" and len(features) <= SINGLE_THREAD_MAX_ROWS:
        return np.asarray(artifact.model.predict(artifact.model_input(features), num_threads=1), dtype="float64")
    return artifact.predict(features)


def score_matrix(artifact: ModelArtifact, matrix: np.ndarray) -> np.ndarray:
    """A LightGBM model on the matrix ``encode.MatrixEncoder`` built (same numbers as ``score``)."""
    threads = 1 if len(matrix) <= SINGLE_THREAD_MAX_ROWS else 0
    return np.asarray(artifact.model.predict(matrix, num_threads=threads), dtype="float64")


def predict(
    served: ServedModel,
    instances: list[dict[str, Any]],
    *,
    features: pd.DataFrame | None = None,
    entities: list[str] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Score ``instances`` with ``served`` (the caller took this reference once: a swap meanwhile is harmless); the
    model is called once for all rows. The caller logs the result (``predlog.PredictionLog``).

    ``instances`` are raw stream fields, unless ``features`` gives the model's features already computed (an
    entity looked up in the online store; then ``entities`` names each row's entity)."""
    check_scalars(instances)
    matrix = served.encoder.encode(instances) if features is None and served.encoder is not None else None
    if matrix is not None and len(matrix) == 1 and served.row_predictor is not None:
        scores = np.array([served.row_predictor.predict(matrix[0])])
    elif matrix is not None:
        scores = score_matrix(served.artifact, matrix)
    else:
        if features is None:
            features = features_from_instances(instances, served.pipeline)
        scores = score(served.artifact, features)
    predictions: list[float] = served.artifact.finite(scores).tolist()
    PREDICTIONS.labels(served.model, str(served.version)).inc(len(predictions))
    return {
        "model": served.model,
        "version": served.version,
        "request_id": request_id or str(uuid.uuid4()),
        "predictions": predictions,
        "instances": instances,
        "entities": entities,
        # When it was answered: the prediction's time for feedback by entity, however late its row is stored.
        "answered_at": datetime.now(tz=UTC),
    }
