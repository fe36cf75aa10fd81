"""Predictions: validate the raw instances, compute features with the one offline/online feature function,
score with the served model, and log every row as a PredictionLogged event off the hot path."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import Counter, Histogram

from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.featuredefs import features_from_instances
from driftloop.contracts.payloads import Payload, PredictionLogged
from driftloop.errors import DriftloopError, ValidationFailed

from .served import ServedModel

log = logging.getLogger(__name__)

PRODUCER = "serving"
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1

PREDICTIONS = Counter("driftloop_serving_predictions_total", "Predicted rows", ["model", "version"])
PREDICT_SECONDS = Histogram("driftloop_serving_predict_seconds", "Predict request time", ["model"])
LOG_FAILURES = Counter("driftloop_serving_prediction_log_failures_total", "Prediction rows not logged", ["model"])


def check_scalars(instances: list[dict[str, Any]]) -> None:
    """Instance values must be JSON scalars that fit the PredictionLogged inputs map."""
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


class PredictionFailed(DriftloopError):
    """The model produced no usable answer (e.g. a non-finite score): a fault of the model, not the input (500)."""

    default_code = "prediction_failed"


# Below this many rows one thread scores faster than LightGBM's OpenMP pool (which also contends with the
# request threads): about 4x on one row on 2 cores.
SINGLE_THREAD_MAX_ROWS = 1000


def score(artifact: ModelArtifact, features: pd.DataFrame) -> np.ndarray:
    if artifact.family == "lightgbm" and len(features) <= SINGLE_THREAD_MAX_ROWS:
        return np.asarray(artifact.model.predict(artifact.model_input(features), num_threads=1), dtype="float64")
    return artifact.predict(features)


def predict(
    served: ServedModel,
    instances: list[dict[str, Any]],
    publish: Callable[[Event[Payload]], None],
    *,
    features: pd.DataFrame | None = None,
    entities: list[str] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Score ``instances`` with ``served`` (the caller took this reference once: a swap meanwhile is harmless).

    ``instances`` are raw stream fields, unless ``features`` gives the model's features already computed (an
    entity looked up in the online store; then ``entities`` names each row's entity)."""
    pipeline = served.pipeline
    check_scalars(instances)
    if features is None:
        features = features_from_instances(instances, pipeline)
    predictions = [float(p) for p in score(served.artifact, features)]
    if not all(math.isfinite(p) for p in predictions):
        raise PredictionFailed(f"{served.model} v{served.version} returned a non-finite prediction")
    request_id = request_id or str(uuid.uuid4())
    stream_fields = set(pipeline.stream.field_names)
    entity_key = pipeline.stream.entity_key
    for index, (instance, prediction) in enumerate(zip(instances, predictions, strict=True)):
        entity = entities[index] if entities is not None else instance.get(entity_key)
        logged = PredictionLogged(
            request_id=request_id,
            model=served.model,
            version=served.version,
            index=index,
            inputs={k: v for k, v in instance.items() if k in stream_fields},
            prediction=prediction,
            entity=None if entity is None else str(entity),
        )
        event = new_event(logged, producer=PRODUCER)
        try:
            publish(event)
        except (DriftloopError, BufferError, ValueError) as exc:
            # The answer is already computed: a full producer queue must not fail the request. Counted + logged.
            LOG_FAILURES.labels(served.model).inc()
            log.warning("prediction %s/%d of %s was not logged: %s", request_id, index, served.model, exc)
    PREDICTIONS.labels(served.model, str(served.version)).inc(len(predictions))
    return {
        "model": served.model,
        "version": served.version,
        "request_id": request_id,
        "predictions": predictions,
        "entities": [
            entities[i] if entities is not None else (None if i_.get(entity_key) is None else str(i_.get(entity_key)))
            for i, i_ in enumerate(instances)
        ],
    }
