"""Record validation: pure functions from a raw record (Avro-decoded or JSON) to a typed row or a rejection.

Every reason code a dead letter can carry is declared here, so that operators and tests see one list.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from driftloop.contracts.fieldtypes import FIELD_TYPES
from driftloop.contracts.pipeline import FieldSpec, PipelineConfig, StreamSpec
from driftloop.errors import ValidationFailed, WireFormatError

# Wire-format reasons (from driftloop.runtime.serde.AvroCodec.decode).
NOT_AVRO = "not_avro"
BAD_MAGIC_BYTE = "bad_magic_byte"
UNKNOWN_SCHEMA_ID = "unknown_schema_id"
TRUNCATED = "truncated"
# The record's writer schema cannot be read into the stream's schema (a field's type, a null, a missing field).
SCHEMA_MISMATCH = "schema_mismatch"
# Shape and type reasons.
NOT_AN_OBJECT = "not_an_object"
UNKNOWN_FIELD = "unknown_field"
WRONG_TYPE = "wrong_type"
NULL_NOT_ALLOWED = "null_not_allowed"
RECORD_TOO_LARGE = "record_too_large"
# Event time reasons.
MISSING_EVENT_TIME = "missing_event_time"
FUTURE_EVENT_TIME = "future_event_time"
# Quality-rule reasons (pipeline `quality:` section).
NOT_NULL = "not_null"
OUT_OF_RANGE = "out_of_range"
NOT_ALLOWED_VALUE = "not_allowed_value"

REASONS: tuple[str, ...] = (
    NOT_AVRO,
    BAD_MAGIC_BYTE,
    UNKNOWN_SCHEMA_ID,
    TRUNCATED,
    SCHEMA_MISMATCH,
    NOT_AN_OBJECT,
    UNKNOWN_FIELD,
    WRONG_TYPE,
    NULL_NOT_ALLOWED,
    RECORD_TOO_LARGE,
    MISSING_EVENT_TIME,
    FUTURE_EVENT_TIME,
    NOT_NULL,
    OUT_OF_RANGE,
    NOT_ALLOWED_VALUE,
)


@dataclass(frozen=True)
class Rejection:
    """Why one record was refused; becomes a RecordRejected event and a DeadLetter row."""

    reason: str
    field: str | None
    message: str
    schema_id: int | None = None


def rejection_from_wire_error(exc: WireFormatError, schema_id: int | None = None) -> Rejection:
    return Rejection(reason=exc.reason, field=None, message=str(exc), schema_id=schema_id)


def rejection_from_failure(exc: ValidationFailed, schema_id: int | None = None) -> Rejection:
    return Rejection(reason=exc.reason, field=exc.field, message=str(exc), schema_id=schema_id)


def check_size(size: int, stream: StreamSpec) -> None:
    if size > stream.max_record_bytes:
        raise ValidationFailed(
            RECORD_TOO_LARGE,
            None,
            f"record is {size} bytes, more than stream {stream.name!r} allows "
            f"(max_record_bytes={stream.max_record_bytes})",
        )


# --- JSON (HTTP intake) -> typed values ---------------------------------------------------------------------


def parse_event_time(value: Any, field: str) -> datetime:
    """An ISO-8601 string with a time zone (``Z`` or an offset) or epoch milliseconds, as an aware UTC datetime.
    A time without a zone is refused: guessing one (UTC, the server's) silently shifts a producer's data."""
    if isinstance(value, bool):
        raise ValidationFailed(WRONG_TYPE, field, f"{field} must be an ISO-8601 string or epoch millis, got a boolean")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValidationFailed(WRONG_TYPE, field, f"{field} must be a finite number of epoch millis, got {value}")
        try:
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise ValidationFailed(WRONG_TYPE, field, f"{field}: {value} epoch millis is out of range") from None
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValidationFailed(
                WRONG_TYPE, field, f"{field} must be an ISO-8601 timestamp or epoch millis, got {value!r}"
            ) from None
        if parsed.tzinfo is None:
            raise ValidationFailed(
                WRONG_TYPE,
                field,
                f"{field} {value!r} has no time zone: add one (e.g. {text}Z or {text}+02:00) or send epoch millis",
            )
        try:
            return parsed.astimezone(UTC)
        except OverflowError:  # e.g. 9999-12-31T23:00-05:00: past year 9999 once in UTC
            raise ValidationFailed(WRONG_TYPE, field, f"{field} {value!r} is out of range in UTC") from None
    raise ValidationFailed(
        WRONG_TYPE, field, f"{field} must be an ISO-8601 string or epoch millis, got {type(value).__name__}"
    )


def _json_type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def coerce_json_value(value: Any, spec: FieldSpec) -> Any:
    """One JSON value as the field's Python type, or ValidationFailed(wrong_type). ``None`` passes through."""
    if value is None:
        return None
    name, kind = spec.name, spec.type

    def wrong(expected: str) -> ValidationFailed:
        return ValidationFailed(
            WRONG_TYPE, name, f"{name} must be {expected}, got {_json_type_name(value)} {json.dumps(value)[:80]}"
        )

    if kind == "string":
        if not isinstance(value, str):
            raise wrong("a string")
        if not is_utf8(value):  # a lone surrogate escape ("\\ud800") parses but cannot be stored
            raise ValidationFailed(WRONG_TYPE, name, f"{name} is not valid UTF-8 (a lone surrogate)")
        return value
    field_type = FIELD_TYPES[kind]
    if (bounds := field_type.int_range) is not None:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        low, high = bounds
        if not low <= value <= high:
            raise wrong(f"an integer that fits a {kind} ({low}..{high})")
        return value
    if field_type.is_float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong("a number")
        try:
            return float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise wrong(f"a number that fits a {kind}") from None
    if kind == "boolean":
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if kind == "timestamp":
        return parse_event_time(value, name)
    raise AssertionError(f"unhandled field type {kind}")  # pragma: no cover - FieldType is a closed Literal


def coerce_json_record(raw: Any, stream: StreamSpec) -> dict[str, Any]:
    """A JSON object as a row of the stream's fields (missing fields are null). Unknown fields are refused so
    that a typo in a field name is not silently dropped."""
    if not isinstance(raw, dict):
        raise ValidationFailed(NOT_AN_OBJECT, None, f"a record must be a JSON object, got {_json_type_name(raw)}")
    known = set(stream.field_names)
    unknown = [key for key in raw if key not in known]
    if unknown:
        raise ValidationFailed(
            UNKNOWN_FIELD, unknown[0], f"unknown field {unknown[0]!r}; stream {stream.name!r} has {stream.field_names}"
        )
    return {spec.name: coerce_json_value(raw.get(spec.name), spec) for spec in stream.fields}


# --- rules shared by both intakes ----------------------------------------------------------------------------


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_types(record: dict[str, Any], stream: StreamSpec) -> None:
    """Each present value has its field's Python type and fits the landed Arrow type (int32, int64, UTF-8):
    a value Parquet cannot store must become a dead letter here, never an error at landing time. Avro decoders
    accept an ``int`` wider than 32 bits, so the Avro path needs this as much as the JSON one."""
    for spec in stream.fields:
        value = record.get(spec.name)
        if value is None:
            continue
        name, kind, field_type = spec.name, spec.type, FIELD_TYPES[spec.type]
        if not isinstance(value, field_type.python) or (isinstance(value, bool) and bool not in field_type.python):
            raise ValidationFailed(WRONG_TYPE, name, f"{name} must be a {kind}, got {type(value).__name__}")
        checked: Any = value  # of the field's Python type now (isinstance on a tuple of types narrows to object)
        if (bounds := field_type.int_range) is not None:
            low, high = bounds
            if not low <= checked <= high:
                raise ValidationFailed(
                    OUT_OF_RANGE, name, f"{name}={checked} is out of range for a {kind} ({low}..{high})"
                )
        elif (limit := field_type.float_max) is not None and math.isfinite(checked) and abs(checked) > limit:
            # Arrow would store it as infinity without a word.
            raise ValidationFailed(OUT_OF_RANGE, name, f"{name}={checked} is out of range for a {kind} (±{limit:.7g})")
        elif kind == "string" and not is_utf8(checked):
            raise ValidationFailed(WRONG_TYPE, name, f"{name} is not valid UTF-8")
        elif kind == "timestamp" and checked.tzinfo is None:
            raise ValidationFailed(WRONG_TYPE, name, f"{name} is a timestamp without a time zone")


def check_record(record: dict[str, Any], pipeline: PipelineConfig, now: datetime) -> None:
    """Types and widths, schema nullability, event time and the pipeline's quality rules, in that order; raises
    the first failure as ValidationFailed."""
    stream = pipeline.stream
    check_types(record, stream)
    event_time = record.get(stream.event_time)
    if event_time is None:
        raise ValidationFailed(
            MISSING_EVENT_TIME, stream.event_time, f"the event time {stream.event_time!r} is missing"
        )
    for spec in stream.fields:
        if not spec.nullable and record.get(spec.name) is None:
            raise ValidationFailed(NULL_NOT_ALLOWED, spec.name, f"{spec.name} is null but the field is not nullable")
    if not isinstance(event_time, datetime):
        raise ValidationFailed(WRONG_TYPE, stream.event_time, f"{stream.event_time} is not a timestamp")
    horizon = now + timedelta(seconds=stream.max_future_seconds)
    if event_time > horizon:
        raise ValidationFailed(
            FUTURE_EVENT_TIME,
            stream.event_time,
            f"{stream.event_time} {event_time.isoformat()} is more than {stream.max_future_seconds}s "
            f"ahead of now ({now.isoformat()})",
        )
    for rule in pipeline.quality:
        value = record.get(rule.field)
        if rule.rule == "not_null":
            if value is None:
                raise ValidationFailed(NOT_NULL, rule.field, f"{rule.field} is null (quality rule not_null)")
        elif value is None:
            continue  # range / allowed_values judge present values; nulls are the not_null rule's business
        elif rule.rule == "range":
            if isinstance(value, float) and math.isnan(value):
                raise ValidationFailed(OUT_OF_RANGE, rule.field, f"{rule.field} is NaN, outside any range")
            if (rule.min is not None and value < rule.min) or (rule.max is not None and value > rule.max):
                raise ValidationFailed(
                    OUT_OF_RANGE, rule.field, f"{rule.field}={value} is outside [{rule.min}, {rule.max}]"
                )
        elif rule.rule == "allowed_values" and not _allowed(value, rule.values):
            raise ValidationFailed(NOT_ALLOWED_VALUE, rule.field, f"{rule.field}={value!r} is not one of {rule.values}")


def _allowed(value: Any, allowed: list[Any]) -> bool:
    # bool is an int in Python: keep True from matching 1 unless the rule lists booleans.
    return any(value == option and isinstance(value, bool) == isinstance(option, bool) for option in allowed)


def validate_decoded(
    record: dict[str, Any], pipeline: PipelineConfig, now: datetime, schema_id: int | None = None
) -> Rejection | None:
    """A record decoded from Avro (already typed by the reader schema): None if it may land."""
    try:
        check_record(record, pipeline, now)
    except ValidationFailed as exc:
        return rejection_from_failure(exc, schema_id)
    return None


def validate_json(raw: Any, pipeline: PipelineConfig, now: datetime) -> tuple[dict[str, Any] | None, Rejection | None]:
    """A JSON record from the HTTP intake: (typed row, None) if it may land, else (None, rejection)."""
    try:
        check_size(len(json.dumps(raw, default=str).encode()), pipeline.stream)
        row = coerce_json_record(raw, pipeline.stream)
        check_record(row, pipeline, now)
    except ValidationFailed as exc:
        return None, rejection_from_failure(exc)
    return row, None
