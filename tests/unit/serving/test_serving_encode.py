"""The pandas-free request path (``encode.MatrixEncoder``) against the DataFrame path it replaces
(``features_from_instances`` + the artifact's typed matrix): same numbers on good rows (missing values, unknown
categories, integers, derived features, infinities), the same 422 (reason, field, message) on bad rows, and the
DataFrame path for what it does not handle."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from model_factory import feature_frame, make_pipeline, raw_transactions, train_artifact

from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.featuredefs import features_from_instances
from driftloop.contracts.pipeline import parse_pipeline
from driftloop.errors import ValidationFailed
from driftloop.services.serving.encode import MatrixEncoder
from driftloop.services.serving.predict import check_scalars, score, score_matrix
from driftloop.services.serving.rowpredict import SingleRowPredictor


@pytest.fixture(scope="module")
def model() -> tuple[Any, ModelArtifact]:
    pipeline = make_pipeline(model="fraud-encode", stream="tx-encode")
    return pipeline, train_artifact(pipeline, feature_frame(pipeline, rows=1500), rounds=30)


def rows(n: int, seed: int) -> list[dict[str, Any]]:
    raw = raw_transactions(n, seed=seed).drop(columns=["is_fraud"])
    raw["event_time"] = raw["event_time"].astype(str)
    return raw.to_dict(orient="records")


def dataframe_path(pipeline: Any, artifact: ModelArtifact, instances: list[dict[str, Any]]) -> np.ndarray:
    return score(artifact, features_from_instances(instances, pipeline))


def test_the_encoder_scores_exactly_like_the_dataframe_path(model: tuple[Any, ModelArtifact]) -> None:
    pipeline, artifact = model
    encoder = MatrixEncoder.build(pipeline, artifact)
    assert encoder is not None
    instances = rows(200, seed=11)
    # Missing values, a category never seen in training, integers where doubles are expected, zero (log1p).
    instances[0]["age"] = None
    instances[1]["merchant_category"] = "unheard-of"
    instances[2]["merchant_category"] = None
    instances[3]["amount"] = 120
    instances[4]["amount"] = 0.0
    instances[5]["hour"] = None
    instances[6]["amount"] = -1.0  # log1p(-1) = -inf: a missing value on both paths
    for n in (1, 2, 10, 200):
        matrix = encoder.encode(instances[:n])
        assert matrix is not None
        expected = dataframe_path(pipeline, artifact, instances[:n])
        assert score_matrix(artifact, matrix).tolist() == expected.tolist()
    assert math.isnan(encoder.encode([instances[6]])[0, pipeline.feature_names.index("log_amount")])


BAD_ROWS = [
    ({"amount": "lots"}, None),
    ({"amount": True}, None),
    ({"hour": 3.5, "age": "old"}, None),
    ({}, "merchant_category"),
    ({}, "amount"),
]


@pytest.mark.parametrize(("change", "drop"), BAD_ROWS)
def test_bad_rows_give_the_same_422_on_both_paths(model: tuple[Any, ModelArtifact], change: dict, drop: str) -> None:
    pipeline, artifact = model
    encoder = MatrixEncoder.build(pipeline, artifact)
    good, bad = rows(2, seed=3)
    bad.update(change)
    if drop:
        bad.pop(drop)
    with pytest.raises(ValidationFailed) as old:
        features_from_instances([good, bad], pipeline)
    with pytest.raises(ValidationFailed) as new:
        encoder.encode([good, bad])
    assert (new.value.reason, new.value.field, str(new.value)) == (old.value.reason, old.value.field, str(old.value))
    with pytest.raises(ValidationFailed) as empty:
        encoder.encode([])
    assert empty.value.reason == "empty"


def test_what_the_encoder_does_not_reproduce_goes_to_the_dataframe_path(model: tuple[Any, ModelArtifact]) -> None:
    pipeline, artifact = model
    encoder = MatrixEncoder.build(pipeline, artifact)
    (row,) = rows(1, seed=4)
    row["merchant_category"] = 7  # a number in a categorical: pandas' matching rules decide
    assert encoder.encode([row]) is None
    assert dataframe_path(pipeline, artifact, [row]).shape == (1,)
    other_family = ModelArtifact(
        family="sklearn_linear", task="classification", feature_names=artifact.feature_names, categories={}, model=None
    )
    assert MatrixEncoder.build(pipeline, other_family) is None


def test_the_one_row_predictor_gives_booster_predicts_numbers(model: tuple[Any, ModelArtifact]) -> None:
    pipeline, artifact = model
    predictor = SingleRowPredictor.for_booster(artifact.model)
    assert predictor is not None
    matrix = MatrixEncoder.build(pipeline, artifact).encode(rows(300, seed=21))
    matrix[0, :] = np.nan  # every feature missing
    expected = artifact.model.predict(matrix, num_threads=1)
    assert [predictor.predict(row) for row in matrix] == expected.tolist()


NUMBERS_PIPELINE = """
stream:
  name: tx-numbers
  fields:
    - {name: id, type: string}
    - {name: ts, type: timestamp}
    - {name: a, type: double}
    - {name: b, type: double}
    - {name: c, type: int}
    - {name: y, type: int}
  entity_key: id
  event_time: ts
  label: y
features:
  - {name: a}
  - {name: b}
  - {name: c}
model:
  name: numbers-encode
  family: lightgbm
  task: classification
"""


def test_a_request_of_numbers_is_read_in_one_step_with_the_same_numbers_and_errors() -> None:
    """A model of plain numeric fields reads a request of numbers and nulls in one step (``_numbers``): the same
    matrix, the same scores as the per-column fill and the DataFrame path; anything else takes the checks."""
    import lightgbm as lgb
    import pandas as pd

    pipeline = parse_pipeline(NUMBERS_PIPELINE)
    rng = np.random.default_rng(5)
    x = pd.DataFrame(rng.normal(size=(400, 3)), columns=["a", "b", "c"])
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_threads": 1},
        lgb.Dataset(x, label=(x["a"] + x["b"] > 0).astype(int)),
        num_boost_round=10,
    )
    artifact = ModelArtifact(
        family="lightgbm", task="classification", feature_names=["a", "b", "c"], categories={}, model=booster
    )
    encoder = MatrixEncoder.build(pipeline, artifact)
    assert encoder is not None and encoder.numbers_only
    instances: list[dict[str, Any]] = [{"id": f"e{i}", "a": float(i) / 7, "b": -float(i), "c": i} for i in range(50)]
    instances[1]["a"] = None
    instances[2]["b"] = 3  # an int where a double is expected
    instances[3]["c"] = None
    matrix = encoder.encode(instances)
    assert matrix is not None
    np.testing.assert_array_equal(matrix, encoder._fill(instances))  # the per-column fill
    assert score_matrix(artifact, matrix).tolist() == dataframe_path(pipeline, artifact, instances).tolist()
    for change, reason in (({"a": "x"}, "wrong_type"), ({"b": True}, "wrong_type"), ({"c": [1]}, "wrong_type")):
        bad = [instances[0], {**instances[1], **change}]
        assert encoder._numbers(bad) is None
        with pytest.raises(ValidationFailed) as old:
            features_from_instances(bad, pipeline)
        with pytest.raises(ValidationFailed) as new:
            encoder.encode(bad)
        assert (new.value.reason, new.value.field, str(new.value)) == (
            old.value.reason,
            old.value.field,
            str(old.value),
        )
        assert new.value.reason == reason
    missing = [instances[0], {"id": "e", "a": 1.0, "c": 2}]
    with pytest.raises(ValidationFailed) as lacking:
        encoder.encode(missing)
    assert lacking.value.reason == "missing_field" and lacking.value.field == "b"


@pytest.mark.parametrize(
    ("value", "reason"),
    [(math.inf, "not_finite"), (math.nan, "not_finite"), (2**64, "out_of_range"), (-(2**63) - 1, "out_of_range"),
     ({"h": 1}, "not_a_scalar"), ([1], "not_a_scalar")],
)  # fmt: skip
def test_scalars_are_checked_together_and_the_first_culprit_is_named(value: Any, reason: str) -> None:
    good = {"a": 1.5, "b": None, "c": True, "d": "s", "e": 2**63 - 1, "f": -(2**63)}
    check_scalars([good] * 3)  # fine: no error
    check_scalars([{"x": 1e308}, {"x": 1e308}])  # finite values whose sum overflows: still fine
    with pytest.raises(ValidationFailed) as failed:
        check_scalars([good, {**good, "late": 0.5}, {**good, "bad": value, "worse": value}])
    assert (failed.value.reason, failed.value.field) == (reason, "bad")
    assert "instances[2].bad" in str(failed.value)
