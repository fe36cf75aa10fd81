"""The per-record path of the Kafka intake: one Confluent-framed Avro message to a typed row or a rejection.

Whatever is wrong with a record's bytes must end as a dead letter with a reason, never as an exception: an
exception makes the intake re-read the partition, and a record that fails every time would block it for ever.
So every decode-level error (fastavro raises OverflowError, ValueError, UnicodeDecodeError, IndexError, EOFError,
...) becomes a rejection here. What is not the record's fault, chiefly a schema registry that cannot be reached,
is raised before the body is touched, so that the caller still re-reads the record later.
"""

from __future__ import annotations

import io
import json
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro

from driftloop.errors import ValidationFailed, WireFormatError
from driftloop.pipeline import PipelineConfig
from driftloop.serde import AvroCodec

from .validation import (
    NOT_AVRO,
    OUT_OF_RANGE,
    TRUNCATED,
    WRONG_TYPE,
    Rejection,
    check_size,
    is_utf8,
    rejection_from_failure,
    rejection_from_wire_error,
    validate_decoded,
)

_HEADER = struct.Struct(">bI")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FASTAVRO_KEYS = ("__fastavro_parsed", "__named_schemas")
_raw_schemas: dict[str, Any] = {}


def decode_record(
    codec: AvroCodec, value: bytes, reader: Any, pipeline: PipelineConfig, now: datetime
) -> tuple[dict[str, Any] | None, Rejection | None]:
    """(row, None) when ``value`` may land, else (None, rejection). ``reader`` is the stream's parsed reader
    schema. Raises only for what is not the record's fault (registry unreachable): the caller retries those."""
    stream = pipeline.stream
    schema_id: int | None = None
    writer: Any = None
    try:
        check_size(len(value), stream)
        if len(value) >= _HEADER.size and value[0] == 0:
            schema_id = _HEADER.unpack_from(value)[1]
            # Outside the catch-all below: an unreachable registry raises to the caller (re-read later); an
            # unknown id is a WireFormatError, the record's fault.
            writer = codec.writer_schema(schema_id)
        try:
            schema_id, record = codec.decode(value, reader_schema=reader)
        except WireFormatError as exc:
            if _negative_length(exc):
                return None, Rejection(
                    NOT_AVRO, None, f"a negative length in the Avro body: {exc.__cause__}", schema_id
                )
            if exc.reason != NOT_AVRO or schema_id is None:
                return None, rejection_from_wire_error(exc, schema_id)
            return None, diagnose(value, writer, pipeline, exc, schema_id)
        except Exception as exc:  # any decoder error is the record's (module docstring)
            assert schema_id is not None  # a malformed header is a WireFormatError
            return None, diagnose(value, writer, pipeline, exc, schema_id)
    except WireFormatError as exc:
        return None, rejection_from_wire_error(exc, schema_id)
    except ValidationFailed as exc:
        return None, rejection_from_failure(exc, schema_id)
    rejection = validate_decoded(record, pipeline, now, schema_id)
    return (None, rejection) if rejection is not None else (record, None)


def diagnose(value: bytes, writer: Any, pipeline: PipelineConfig, error: Exception, schema_id: int) -> Rejection:
    """The reason a body failed to decode. The body is read again without logical types and with undecodable
    UTF-8 kept as surrogates, so that the failing field can be named: a timestamp a datetime cannot hold is
    ``out_of_range``, a string that is not UTF-8 is ``wrong_type``; anything else is ``truncated`` / ``not_avro``."""
    stream = pipeline.stream
    cause = error.__cause__ if isinstance(error, WireFormatError) and error.__cause__ is not None else error
    try:
        raw = fastavro.schemaless_reader(
            io.BytesIO(value[_HEADER.size :]),
            _raw_schema(writer),
            _raw_schema(stream.avro_schema()),
            handle_unicode_errors="surrogateescape",
        )
    except EOFError:
        return Rejection(TRUNCATED, None, f"Avro body ended early (schema id {schema_id}): {cause}", schema_id)
    except Exception as exc:  # still malformed without logical types: not Avro
        return Rejection(NOT_AVRO, None, f"body is not valid Avro for schema id {schema_id}: {exc!r}", schema_id)
    if isinstance(raw, dict):
        for spec in stream.fields:
            field_value = raw.get(spec.name)
            if spec.type == "timestamp" and isinstance(field_value, int) and not _representable(field_value):
                return Rejection(
                    OUT_OF_RANGE,
                    spec.name,
                    f"{spec.name}={field_value} epoch millis is out of range (years 1..9999)",
                    schema_id,
                )
            if spec.type == "string" and isinstance(field_value, str) and not is_utf8(field_value):
                return Rejection(WRONG_TYPE, spec.name, f"{spec.name} is not valid UTF-8", schema_id)
    return Rejection(NOT_AVRO, None, f"body is not valid Avro for schema id {schema_id}: {cause!r}", schema_id)


def _negative_length(exc: WireFormatError) -> bool:
    """fastavro reads a negative string/bytes length as "read everything", then reports the body as ended early
    ("Expected -3 bytes, read 11"): that record is malformed, not truncated."""
    return exc.reason == TRUNCATED and isinstance(exc.__cause__, EOFError) and "Expected -" in str(exc.__cause__)


def _representable(millis: int) -> bool:
    try:
        _EPOCH + timedelta(milliseconds=millis)
    except OverflowError:
        return False
    return True


def _raw_schema(schema: Any) -> Any:
    """``schema`` parsed without logical types (timestamps read as plain longs), cached."""
    key = json.dumps(schema, sort_keys=True, default=str)
    parsed = _raw_schemas.get(key)
    if parsed is None:
        parsed = fastavro.parse_schema(_strip(schema))
        _raw_schemas[key] = parsed
    return parsed


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "logicalType" and k not in _FASTAVRO_KEYS}
    if isinstance(node, list):
        return [_strip(item) for item in node]
    return node
