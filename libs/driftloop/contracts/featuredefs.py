"""Feature definitions applied the same way offline (Spark, per pandas batch) and online (serving).

One function computes features from raw stream fields, so training and serving cannot skew.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from driftloop.contracts.pipeline import PipelineConfig
from driftloop.errors import ValidationFailed


def compute_features(raw: pd.DataFrame, pipeline: PipelineConfig, *, keep_keys: bool = True) -> pd.DataFrame:
    """Columns: entity key and event time (if ``keep_keys`` and present), the features, the label (if present)."""
    out = pd.DataFrame(index=raw.index)
    stream = pipeline.stream
    if keep_keys:
        for key in (stream.entity_key, stream.event_time):
            if key in raw.columns:
                out[key] = raw[key]
    for feature in pipeline.features:
        if feature.aggregate is not None:
            # Aggregates span many records: the features service computes them (Spark offline, the stream worker
            # online). A frame that already carries the value (an online lookup, a client) keeps it.
            out[feature.name] = raw[feature.name] if feature.name in raw.columns else None
        elif feature.expr is not None:
            try:
                values = raw.eval(feature.expr, engine="python")
            except Exception as exc:
                raise ValidationFailed(
                    "bad_feature_expr", feature.name, f"feature {feature.name!r} = {feature.expr!r} failed: {exc}"
                ) from exc
            out[feature.name] = values
        else:
            source = feature.source or feature.name
            if source not in raw.columns:
                raise ValidationFailed("missing_field", source, f"feature {feature.name!r} needs field {source!r}")
            out[feature.name] = raw[source]
        if feature.kind == "numeric":
            out[feature.name] = pd.to_numeric(out[feature.name], errors="coerce").astype("float64")
        else:
            out[feature.name] = out[feature.name].astype("object").where(out[feature.name].notna(), None)
    if stream.label in raw.columns:
        out[stream.label] = raw[stream.label]
    return out


def features_from_instances(instances: list[dict[str, Any]], pipeline: PipelineConfig) -> pd.DataFrame:
    """Serving-side: validate inline instances (raw stream fields) and compute the model's features.

    Aggregate features are taken from the instance when it carries them by name (e.g. values from
    ``POST /v1/features/online``), else they are missing (NaN), which the models accept."""
    if not instances:
        raise ValidationFailed("empty", None, "instances is empty: send at least one instance")
    needed: set[str] = set()
    for feature in pipeline.features:
        if feature.expr is None and feature.aggregate is None:
            needed.add(feature.source or feature.name)
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise ValidationFailed("not_an_object", None, f"instances[{i}] is not an object of field values")
        missing = sorted(needed - instance.keys())
        if missing:
            raise ValidationFailed("missing_field", missing[0], f"instances[{i}] lacks field(s) {missing}")
        for name in needed:
            spec = next((f for f in pipeline.features if f.aggregate is None and (f.source or f.name) == name), None)
            value = instance.get(name)
            numeric = spec is not None and spec.kind == "numeric"
            if numeric and value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ValidationFailed("wrong_type", name, f"instances[{i}].{name} must be a number, got {value!r}")
    frame = pd.DataFrame(instances)
    features = compute_features(frame, pipeline, keep_keys=False)
    return features[pipeline.feature_names].replace([np.inf, -np.inf], np.nan)
