"""Requests without pandas: raw instances straight into a LightGBM model's float64 input matrix.

``features_from_instances`` (one DataFrame for the instances, one for the features, one more for the model's typed
matrix) costs about a millisecond per request whatever its size; most requests carry one or a few rows. A
``MatrixEncoder`` is compiled once per served model and fills the matrix column by column from the instances, with
the same checks, in the same order, with the same messages, and the same numbers: categoricals become the
training vocabulary's codes (NaN when unknown), which is what LightGBM does with a pandas categorical column, and
infinities become NaN. Expression features are evaluated by pandas' own evaluator on the referenced columns.

Anything the encoder is not sure to reproduce exactly (another model family, a categorical vocabulary that is not
strings, a value of an unusual type for its feature, an expression over a column missing from some rows) makes
``encode`` return None, and the caller takes the DataFrame path: same answers, only slower.
``tests/unit/serving/test_serving_encode.py`` compares the two paths on good and bad rows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.featuredefs import expression_names, numeric_expression
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.errors import ValidationFailed

NAN = math.nan
_NUMBER_TYPES = frozenset({float, int, type(None)})


class _Fallback(Exception):
    """The DataFrame path must answer this request (internal to the encoder)."""


@dataclass(frozen=True)
class _Column:
    """How one column of the model's matrix is filled."""

    kind: str  # "field" (a plain feature: a stream field), "aggregate", "expr", "absent" (not a pipeline feature)
    read: str = ""  # the instance key (field or aggregate) or the expression
    names: tuple[str, ...] = ()  # columns an expression reads
    codes: dict[str, float] | None = None  # a categorical's vocabulary -> code


class MatrixEncoder:
    """Compiled for one (pipeline, artifact); ``encode(instances)`` -> the model's input matrix, or None."""

    def __init__(self, pipeline: PipelineConfig, artifact: ModelArtifact, columns: list[_Column]) -> None:
        self.pipeline = pipeline
        self.artifact = artifact
        self.columns = columns
        # The same set, built the same way, as features_from_instances: checks run in the same order.
        needed: set[str] = set()
        for feature in pipeline.features:
            if feature.expr is None and feature.aggregate is None:
                needed.add(feature.source or feature.name)
        self.needed = needed
        numeric: dict[str, bool] = {}
        for name in needed:
            spec = next((f for f in pipeline.features if f.aggregate is None and (f.source or f.name) == name), None)
            numeric[name] = spec is not None and spec.kind == "numeric"
        self.numeric_needed = [name for name in needed if numeric[name]]
        # Only numeric fields read as they are (the common case): the fill is one comprehension.
        plain = all(c.kind == "field" and c.codes is None for c in columns)
        self.plain = [c.read for c in columns] if plain else None
        # ... and they are exactly the fields the checks need: a request of numbers is read in one step (``_numbers``).
        self.numbers_only = plain and set(self.plain or ()) == needed and len(self.numeric_needed) == len(needed)

    @classmethod
    def build(cls, pipeline: PipelineConfig, artifact: ModelArtifact) -> MatrixEncoder | None:
        if artifact.family != "lightgbm":
            return None
        features = {f.name: f for f in pipeline.features}
        vocabularies = dict(artifact.categories)
        categorical_order = [n for n in artifact.feature_names if n in artifact.categories]
        # LightGBM maps a pandas categorical through the vocabulary stored in the model: use the same one.
        stored = getattr(artifact.model, "pandas_categorical", None)
        if stored is not None and len(stored) == len(categorical_order):
            vocabularies = {name: list(cats) for name, cats in zip(categorical_order, stored, strict=True)}
        columns: list[_Column] = []
        for name in artifact.feature_names:
            codes = None
            if name in vocabularies:
                cats = vocabularies[name]
                if not all(isinstance(c, str) for c in cats):
                    return None
                codes = {c: float(i) for i, c in enumerate(cats)}
            feature = features.get(name)
            if feature is None:
                columns.append(_Column("absent", codes=codes))
                continue
            if (feature.kind == "categorical") != (codes is not None):
                return None
            if feature.aggregate is not None:
                if codes is not None:
                    return None
                columns.append(_Column("aggregate", read=feature.name))
            elif feature.expr is not None:
                names = expression_names(feature.expr)
                if names is None or codes is not None:
                    return None
                columns.append(_Column("expr", read=feature.expr, names=names))
            else:
                columns.append(_Column("field", read=feature.source or feature.name, codes=codes))
        return cls(pipeline, artifact, columns)

    def validate(self, instances: list[dict[str, Any]]) -> None:
        """``features_from_instances``' checks (ValidationFailed, 422), in its order."""
        if not instances:
            raise ValidationFailed("empty", None, "instances is empty: send at least one instance")
        for i, instance in enumerate(instances):
            if not isinstance(instance, dict):
                raise ValidationFailed("not_an_object", None, f"instances[{i}] is not an object of field values")
            if not self.needed <= instance.keys():
                missing = sorted(self.needed - instance.keys())
                raise ValidationFailed("missing_field", missing[0], f"instances[{i}] lacks field(s) {missing}")
            for name in self.numeric_needed:
                value = instance[name]
                if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                    raise ValidationFailed("wrong_type", name, f"instances[{i}].{name} must be a number, got {value!r}")

    def encode(self, instances: list[dict[str, Any]]) -> np.ndarray | None:
        """The matrix (rows x the model's features), or None when the DataFrame path must answer. Validates first:
        a client's mistake is ValidationFailed either way."""
        if self.numbers_only:
            matrix = self._numbers(instances)
            if matrix is not None:
                return matrix
        self.validate(instances)
        try:
            return self._fill(instances)
        except _Fallback:
            return None

    def _numbers(self, instances: list[dict[str, Any]]) -> np.ndarray | None:
        """The matrix of a request whose every needed value is a number or null (what ``validate`` would pass and
        ``_fill`` would read), read in one step; None for anything else, which ``validate`` and ``_fill`` then
        check and read (same errors as ever)."""
        if not instances or not self.plain:
            return None
        keys = self.plain
        try:
            rows = [[instance[k] for k in keys] for instance in instances]
        except (KeyError, TypeError, IndexError):  # a missing field, an instance that is not an object
            return None
        if not {type(v) for row in rows for v in row} <= _NUMBER_TYPES:
            return None
        matrix = np.array(rows, dtype="float64")  # null -> NaN, as _number reads it
        infinite = np.isinf(matrix)
        if infinite.any():
            matrix[infinite] = NAN
        return matrix

    def _fill(self, instances: list[dict[str, Any]]) -> np.ndarray:
        if self.plain:  # every column is a field read as it is: one list per row, one array
            keys = self.plain
            matrix = np.array([[_number(instance[k]) for k in keys] for instance in instances], dtype="float64")
        else:
            matrix = np.empty((len(instances), len(self.columns)), dtype="float64")
            for j, column in enumerate(self.columns):
                if column.kind == "field":
                    key, codes = column.read, column.codes
                    for i, instance in enumerate(instances):
                        matrix[i, j] = _number(instance[key]) if codes is None else _code(instance[key], codes)
                elif column.kind == "aggregate":
                    key = column.read
                    for i, instance in enumerate(instances):
                        matrix[i, j] = _number(instance.get(key))
                elif column.kind == "expr":
                    matrix[:, j] = _evaluate(column, instances)
                else:
                    matrix[:, j] = NAN
        # features_from_instances turns infinities into missing values.
        infinite = np.isinf(matrix)
        if infinite.any():
            matrix[infinite] = NAN
        return matrix


def _number(value: Any) -> float:
    if value is None:
        return NAN
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Fallback
    return float(value)


def _code(value: Any, codes: dict[str, float]) -> float:
    if value is None:
        return NAN
    if not isinstance(value, str):
        raise _Fallback
    return codes.get(value, NAN)


def _evaluate(column: _Column, instances: list[dict[str, Any]]) -> np.ndarray:
    values = numeric_expression(column.read, column.names, instances)
    if values is None:
        raise _Fallback
    return values
