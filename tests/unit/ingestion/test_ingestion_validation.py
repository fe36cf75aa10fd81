"""Validation of ingested records: every reason code a dead letter can carry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from driftloop.contracts.pipeline import PipelineConfig, parse_pipeline
from driftloop.errors import ConfigError, ValidationFailed, WireFormatError
from driftloop.services.ingestion import validation as v

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

PIPELINE_YAML = """
stream:
  name: payments
  fields:
    - {name: customer_id, type: string, nullable: false}
    - {name: event_time, type: timestamp, nullable: false}
    - {name: amount, type: double, nullable: false}
    - {name: age, type: int}
    - {name: visits, type: long}
    - {name: ratio, type: float}
    - {name: vip, type: boolean}
    - {name: category, type: string}
    - {name: label, type: int}
  entity_key: customer_id
  event_time: event_time
  label: label
  max_future_seconds: 60
  max_record_bytes: 300
quality:
  - {rule: not_null, field: category}
  - {rule: range, field: amount, min: 0, max: 1000}
  - {rule: allowed_values, field: category, values: [food, travel]}
  - {rule: allowed_values, field: label, values: [0, 1]}
features:
  - {name: amount}
model: {name: payments-model}
"""


@pytest.fixture(scope="module")
def pipeline() -> PipelineConfig:
    return parse_pipeline(PIPELINE_YAML)


def good_json(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "customer_id": "c1",
        "event_time": "2026-11-23T11:59:00Z",
        "amount": 12.5,
        "age": 40,
        "visits": 3,
        "ratio": 0.5,
        "vip": False,
        "category": "food",
        "label": 0,
    }
    record.update(changes)
    return record


def good_decoded(**changes: Any) -> dict[str, Any]:
    record = good_json(event_time=NOW - timedelta(minutes=1))
    record.update(changes)
    return record


def reject_json(pipeline: PipelineConfig, raw: Any) -> v.Rejection:
    row, rejection = v.validate_json(raw, pipeline, NOW)
    assert row is None and rejection is not None, f"expected a rejection for {raw!r}"
    return rejection


def test_a_good_json_record_is_typed(pipeline: PipelineConfig) -> None:
    row, rejection = v.validate_json(good_json(), pipeline, NOW)
    assert rejection is None
    assert row is not None
    assert row["event_time"] == datetime(2026, 11, 23, 11, 59, tzinfo=UTC)
    assert isinstance(row["amount"], float) and row["visits"] == 3 and row["vip"] is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-23T11:00:00Z", datetime(2026, 11, 23, 11, tzinfo=UTC)),
        ("2026-11-23T12:30:00+01:00", datetime(2026, 11, 23, 11, 30, tzinfo=UTC)),
        (1795420800000, datetime(2026, 11, 23, 8, tzinfo=UTC)),  # epoch millis
    ],
)
def test_event_time_is_iso_8601_or_epoch_millis(value: Any, expected: datetime) -> None:
    assert v.parse_event_time(value, "event_time") == expected


def test_a_good_decoded_record_passes(pipeline: PipelineConfig) -> None:
    assert v.validate_decoded(good_decoded(), pipeline, NOW) is None


@pytest.mark.parametrize(
    ("changes", "reason", "field"),
    [
        ({"amount": "12"}, v.WRONG_TYPE, "amount"),
        ({"amount": True}, v.WRONG_TYPE, "amount"),
        ({"age": 40.5}, v.WRONG_TYPE, "age"),
        ({"age": 2**31}, v.WRONG_TYPE, "age"),
        ({"label": -(2**31) - 1}, v.WRONG_TYPE, "label"),
        ({"age": 1e30}, v.WRONG_TYPE, "age"),
        ({"visits": 2**63}, v.WRONG_TYPE, "visits"),
        ({"event_time": "10000-01-01T00:00:00Z"}, v.WRONG_TYPE, "event_time"),
        ({"event_time": "9999-12-31T23:00:00-05:00"}, v.WRONG_TYPE, "event_time"),  # past 9999 in UTC
        ({"event_time": "0001-01-01T00:00:00+05:00"}, v.WRONG_TYPE, "event_time"),  # before year 1 in UTC
        ({"event_time": 253_402_300_800_000}, v.WRONG_TYPE, "event_time"),  # epoch millis of year 10000
        ({"event_time": 2**70}, v.WRONG_TYPE, "event_time"),
        ({"customer_id": "a\ud800"}, v.WRONG_TYPE, "customer_id"),  # a lone surrogate is no UTF-8
        ({"ratio": 1e39}, v.OUT_OF_RANGE, "ratio"),  # beyond float32: Arrow would make it infinity
        ({"vip": 1}, v.WRONG_TYPE, "vip"),
        ({"customer_id": 7}, v.WRONG_TYPE, "customer_id"),
        ({"event_time": "yesterday"}, v.WRONG_TYPE, "event_time"),
        ({"customer_id": None}, v.NULL_NOT_ALLOWED, "customer_id"),
        ({"amount": None}, v.NULL_NOT_ALLOWED, "amount"),
        ({"event_time": None}, v.MISSING_EVENT_TIME, "event_time"),
        ({"event_time": "2026-11-23T12:05:00Z"}, v.FUTURE_EVENT_TIME, "event_time"),
        ({"category": None}, v.NOT_NULL, "category"),
        ({"amount": -1}, v.OUT_OF_RANGE, "amount"),
        ({"amount": 1000.01}, v.OUT_OF_RANGE, "amount"),
        ({"category": "toys"}, v.NOT_ALLOWED_VALUE, "category"),
        ({"label": 2}, v.NOT_ALLOWED_VALUE, "label"),
        ({"colour": "red"}, v.UNKNOWN_FIELD, "colour"),
        ({"category": "x" * 400}, v.RECORD_TOO_LARGE, None),
    ],
)
def test_bad_json_records_are_rejected_with_reason_and_field(
    pipeline: PipelineConfig, changes: dict[str, Any], reason: str, field: str | None
) -> None:
    rejection = reject_json(pipeline, good_json(**changes))
    assert (rejection.reason, rejection.field) == (reason, field)
    assert rejection.message


def test_missing_event_time_key_is_missing_event_time(pipeline: PipelineConfig) -> None:
    raw = good_json()
    del raw["event_time"]
    assert reject_json(pipeline, raw).reason == v.MISSING_EVENT_TIME


def test_a_record_that_is_not_an_object_is_rejected(pipeline: PipelineConfig) -> None:
    assert reject_json(pipeline, [1, 2]).reason == v.NOT_AN_OBJECT


def test_a_boolean_is_not_an_allowed_integer(pipeline: PipelineConfig) -> None:
    # True == 1 in Python; the rule lists integers, so a boolean must not slip through.
    assert not v._allowed(True, [0, 1])
    assert v._allowed(1, [0, 1])


@pytest.mark.parametrize(
    ("changes", "reason", "field"),
    [
        ({"amount": 5000.0}, v.OUT_OF_RANGE, "amount"),
        ({"amount": float("nan")}, v.OUT_OF_RANGE, "amount"),
        ({"category": None}, v.NOT_NULL, "category"),
        ({"event_time": NOW + timedelta(seconds=61)}, v.FUTURE_EVENT_TIME, "event_time"),
        ({"event_time": None}, v.MISSING_EVENT_TIME, "event_time"),
        # Values a decoder may hand over that no landed Arrow type holds.
        ({"age": 2**31}, v.OUT_OF_RANGE, "age"),
        ({"label": -(2**31) - 1}, v.OUT_OF_RANGE, "label"),
        ({"visits": 2**63}, v.OUT_OF_RANGE, "visits"),
        ({"visits": -(2**63) - 1}, v.OUT_OF_RANGE, "visits"),
        ({"age": True}, v.WRONG_TYPE, "age"),
        ({"amount": "1.0"}, v.WRONG_TYPE, "amount"),
        ({"vip": 1}, v.WRONG_TYPE, "vip"),
        ({"customer_id": b"c1"}, v.WRONG_TYPE, "customer_id"),
        ({"customer_id": "c\udcff"}, v.WRONG_TYPE, "customer_id"),
        ({"event_time": 1795420800000}, v.WRONG_TYPE, "event_time"),
        ({"event_time": datetime(2026, 11, 23, 11)}, v.WRONG_TYPE, "event_time"),  # naive
        ({"ratio": -3.5e38}, v.OUT_OF_RANGE, "ratio"),
    ],
)
def test_bad_decoded_records_are_rejected(
    pipeline: PipelineConfig, changes: dict[str, Any], reason: str, field: str
) -> None:
    rejection = v.validate_decoded(good_decoded(**changes), pipeline, NOW, schema_id=7)
    assert rejection is not None
    assert (rejection.reason, rejection.field, rejection.schema_id) == (reason, field, 7)


def test_decoded_values_at_the_edges_of_their_types_pass(pipeline: PipelineConfig) -> None:
    edges = good_decoded(age=2**31 - 1, label=None, visits=-(2**63), amount=7, ratio=float("inf"))
    assert v.validate_decoded(edges, pipeline, NOW) is None


def test_event_time_exactly_at_the_horizon_is_accepted(pipeline: PipelineConfig) -> None:
    assert v.validate_decoded(good_decoded(event_time=NOW + timedelta(seconds=60)), pipeline, NOW) is None


def test_size_check(pipeline: PipelineConfig) -> None:
    v.check_size(300, pipeline.stream)
    with pytest.raises(ValidationFailed) as info:
        v.check_size(301, pipeline.stream)
    assert info.value.reason == v.RECORD_TOO_LARGE


@pytest.mark.parametrize("reason", [v.NOT_AVRO, v.BAD_MAGIC_BYTE, v.UNKNOWN_SCHEMA_ID, v.TRUNCATED])
def test_wire_errors_keep_their_reason(reason: str) -> None:
    rejection = v.rejection_from_wire_error(WireFormatError(reason, "explained"))
    assert (rejection.reason, rejection.field, rejection.message) == (reason, None, "explained")


def test_every_reason_code_is_declared_once() -> None:
    assert len(set(v.REASONS)) == len(v.REASONS) == 15


@pytest.mark.parametrize("field", ["customer_id", "event_time", "category"])
def test_a_range_rule_on_a_field_that_is_not_a_number_is_a_config_error(field: str) -> None:
    """Else check_record would raise (str < float) on every record and no partition of the stream would move."""
    with pytest.raises(ConfigError, match=f"range rule on '{field}'"):
        parse_pipeline(PIPELINE_YAML.replace("quality:\n", f"quality:\n  - {{rule: range, field: {field}, min: 0}}\n"))


def test_numbers_of_hundreds_of_digits_are_refused_not_raised() -> None:
    """Under a roomy max_record_bytes, ints too large for a float must be a rejection, not an OverflowError."""
    roomy = parse_pipeline(PIPELINE_YAML.replace("max_record_bytes: 300", "max_record_bytes: 100000"))
    for field in ("amount", "ratio", "age", "visits", "event_time"):
        rejection = reject_json(roomy, good_json(**{field: 10**400}))
        assert (rejection.reason, rejection.field) == (v.WRONG_TYPE, field)
    row, rejection = v.validate_json(good_json(ratio=3.4e38, amount=999.5), roomy, NOW)
    assert rejection is None and row is not None
