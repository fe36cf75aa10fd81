"""Feature definitions applied the same way offline (Spark, per pandas batch) and online (serving).

One function computes features from raw stream fields, so training and serving cannot skew.
"""

from __future__ import annotations

import ast
import functools
import math
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


# --- one row without pandas ---------------------------------------------------------------------------------------
# A one-row DataFrame costs milliseconds to build and read back; the monitor turns every logged prediction into its
# feature row. ``row_features`` gives the same values for the rows it is sure about, and None for the others, which
# then take ``compute_features`` (``tests/unit/test_featuredefs_rows.py`` compares the two).


@functools.cache  # the monitor asks for every logged prediction: a pipeline has few expressions
def expression_names(expr: str) -> tuple[str, ...] | None:
    """The plain names an expression reads, or None if it is not plain Python syntax (pandas' backticks, ``@``)."""
    if "`" in expr or "@" in expr:
        return None
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return None
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return tuple(sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - called))


def _number_column(name: str, rows: list[dict[str, Any]]) -> np.ndarray | None:
    """One referenced column with the dtype pandas would infer for it; None unless every value is a number or null."""
    values = []
    floats = False
    for row in rows:
        if name not in row:
            return None
        value = row[name]
        if value is None:
            floats = True
            value = math.nan
        elif isinstance(value, bool) or not isinstance(value, int | float):
            return None
        elif isinstance(value, float):
            floats = True
        values.append(value)
    return np.array(values, dtype="float64" if floats else "int64")


def numeric_expression(expr: str, names: tuple[str, ...], rows: list[dict[str, Any]]) -> np.ndarray | None:
    """``expr`` over the rows' columns ``names``, by pandas' own evaluator, as float64 (one value a row); None when
    a column is not numbers, the expression fails or its result is not numeric (the DataFrame path answers)."""
    env: dict[str, Any] = {}
    for name in names:
        column = _number_column(name, rows)
        if column is None:
            return None
        env[name] = column
    try:
        values = pd.eval(expr, engine="python", local_dict=env)
    except Exception:  # the DataFrame path raises the client-facing error (bad_feature_expr)
        return None
    out = np.asarray(values)
    if out.dtype.kind not in "biuf":
        return None
    return np.broadcast_to(out.astype("float64"), (len(rows),))


_PLAIN_TYPES = (str, int, float, bool, type(None))


def row_features(row: dict[str, Any], pipeline: PipelineConfig) -> dict[str, Any] | None:
    """``compute_features(pd.DataFrame([row]), pipeline, keep_keys=False)``'s features for one row, without pandas:
    numbers as floats (null: NaN), categoricals as they are (null or NaN: None); a field a feature needs and the
    row lacks raises the same ValidationFailed. None when unsure: a number written as text, a value of another
    type, an expression that is not plain numbers."""
    out: dict[str, Any] = {}
    for feature in pipeline.features:
        if feature.aggregate is not None:
            value = row.get(feature.name)
        elif feature.expr is not None:
            names = expression_names(feature.expr)
            if names is None or feature.kind != "numeric" or any(row.get(name) is None for name in names):
                return None  # a null alone in a one-row frame is not a number to pandas: its evaluator fails on it
            values = numeric_expression(feature.expr, names, [row])
            if values is None:
                return None
            out[feature.name] = float(values[0])
            continue
        else:
            source = feature.source or feature.name
            if source not in row:
                raise ValidationFailed("missing_field", source, f"feature {feature.name!r} needs field {source!r}")
            value = row[source]
        if type(value) not in _PLAIN_TYPES:
            return None
        if feature.kind == "numeric":
            if isinstance(value, str):
                return None  # pandas parses numbers written as text its own way
            out[feature.name] = math.nan if value is None else float(value)
        elif isinstance(value, float) and math.isnan(value):
            out[feature.name] = None
        else:
            out[feature.name] = value
    return out
