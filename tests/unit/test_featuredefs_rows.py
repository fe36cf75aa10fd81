"""One row's features without pandas (``row_features``, the monitor's path for each logged prediction) against
the one feature function (``compute_features`` on a one-row DataFrame): the same values on every row it answers
(missing values, integers, booleans, infinities, derived and aggregate features, a renamed field), the same
ValidationFailed for a missing field, and None (the DataFrame path) for what it cannot be sure of."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest
from model_factory import pipeline_text, raw_transactions

from driftloop.contracts.featuredefs import compute_features, row_features
from driftloop.contracts.pipeline import PipelineConfig, parse_pipeline
from driftloop.errors import ValidationFailed

EXTRA = (
    "  - {name: amount_sum_1h, aggregate: sum, source: amount, window: 1h}\n"
    "  - {name: city, kind: categorical}\n"
    "  - {name: years, source: age}\n"
    '  - {name: night, expr: "(hour < 5) | (hour > 22)"}\n'
)


@pytest.fixture(scope="module")
def pipeline() -> PipelineConfig:
    text = pipeline_text("fraud-rows", "tx-rows")
    start = text.index("features:\n") + len("features:\n")
    text = text[:start] + EXTRA + text[start:]
    text = text.replace(
        "  - {name: hour}\n", "  - {name: hour}\n  - {name: city_code, source: city, kind: categorical}\n"
    )
    text = text.replace(
        "    - {name: hour, type: int}\n", "    - {name: hour, type: int}\n    - {name: city, type: string}\n"
    )
    return parse_pipeline(text)


def dataframe_row(row: dict[str, Any], pipeline: PipelineConfig) -> dict[str, Any]:
    frame = compute_features(pd.DataFrame([row]), pipeline, keep_keys=False)
    return {name: frame[name].iloc[0] for name in pipeline.feature_names}


def same(a: Any, b: Any) -> bool:
    """Equal values of the same kind: numbers as floats (NaN equals NaN), anything else of the same type."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return type(a) is type(b) and a == b


def rows(n: int) -> list[dict[str, Any]]:
    raw = raw_transactions(n, seed=5).drop(columns=["is_fraud"])
    raw["event_time"] = raw["event_time"].astype(str)
    raw["city"] = ["Oslo", "Lima", "Pune", "Kyiv"] * (n // 4)
    records = raw.to_dict(orient="records")
    for record in records:  # plain Python values, as a decoded event carries them
        record["amount"], record["age"], record["hour"] = (
            float(record["amount"]),
            int(record["age"]),
            int(record["hour"]),
        )
    return records


UNUSUAL = [
    {"age": None},
    {"age": None, "city": None},
    {"amount": 0},  # an integer where a double is expected
    {"amount": -1.0},  # log1p(-1) = -inf
    {"amount": math.inf},
    {"age": True},
    {"merchant_category": None},
    {"merchant_category": math.nan},
    {"city": 7},  # a number in a categorical
    {"amount_sum_1h": 12.5},  # an aggregate the request carries
    {"amount_sum_1h": None, "city": None},
]


@pytest.mark.parametrize("change", [{}, *UNUSUAL])
def test_a_row_gets_exactly_the_dataframe_paths_features(pipeline: PipelineConfig, change: dict[str, Any]) -> None:
    for row in rows(8):
        row.update(change)
        fast = row_features(row, pipeline)
        assert fast is not None, change
        expected = dataframe_row(row, pipeline)
        assert list(fast) == list(expected)
        for name in expected:
            assert same(fast[name], expected[name]), (name, fast[name], expected[name])


@pytest.mark.parametrize("drop", ["amount", "merchant_category", "age"])
def test_a_missing_field_raises_what_the_dataframe_path_raises(pipeline: PipelineConfig, drop: str) -> None:
    row = rows(4)[0]
    row.pop(drop)
    with pytest.raises(ValidationFailed) as old:
        dataframe_row(row, pipeline)
    with pytest.raises(ValidationFailed) as new:
        row_features(row, pipeline)
    assert (new.value.reason, new.value.field, str(new.value)) == (old.value.reason, old.value.field, str(old.value))


# A null alone in a column an expression reads is not a number to pandas (the DataFrame path refuses it).
@pytest.mark.parametrize(
    "change",
    [
        {"amount": "12.5"},
        {"age": "old"},
        {"amount": None},
        {"merchant_category": ["a", "b"]},
        {"hour": {"h": 1}},
        {"amount": True},
    ],
)
def test_what_it_cannot_be_sure_of_goes_to_the_dataframe_path(pipeline: PipelineConfig, change: dict[str, Any]) -> None:
    row = rows(4)[0] | change
    assert row_features(row, pipeline) is None
