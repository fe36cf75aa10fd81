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

from driftloop.contracts.pipeline import PipelineConfig
from driftloop.errors import ValidationFailed, WireFormatError
from driftloop.runtime.serde import AvroCodec

from .validation import (
    NOT_AVRO,
    OUT_OF_RANGE,
    SCHEMA_MISMATCH,
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
# Reader schemas with the writer's record name as an alias, by (writer, reader) object ids.
_aliased_readers: dict[tuple[int, int], tuple[Any, Any, Any]] = {}
_ALIASED_READERS_MAX = 256


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
        if writer is not None and (problem := wire_problem(value[_HEADER.size :], writer, schema_id)) is not None:
            return None, problem
        try:
            schema_id, record = codec.decode(value, reader_schema=reader_for(writer, reader))
        except WireFormatError as exc:
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
    """The reason a body failed to decode. The body is read again with its writer schema alone, without logical
    types and with undecodable UTF-8 kept as surrogates, so that the failing field can be named: a timestamp a
    datetime cannot hold is ``out_of_range``, a string that is not UTF-8 is ``wrong_type``, a body that is valid for
    its writer schema but cannot be read into the stream's is ``schema_mismatch``; anything else is ``truncated`` /
    ``not_avro``."""
    stream = pipeline.stream
    cause = error.__cause__ if isinstance(error, WireFormatError) and error.__cause__ is not None else error
    try:
        raw = fastavro.schemaless_reader(
            io.BytesIO(value[_HEADER.size :]), _raw_schema(writer), None, handle_unicode_errors="surrogateescape"
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
        mismatch = schema_mismatch(writer, stream.avro_schema(), raw, schema_id)
        if mismatch is not None:
            return mismatch
    return Rejection(NOT_AVRO, None, f"body is not valid Avro for schema id {schema_id}: {cause!r}", schema_id)


# --- writer schema against the stream's schema ---------------------------------------------------------------------


def reader_for(writer: Any, reader: Any) -> Any:
    """``reader``, or a copy of it with the writer's record name as an alias when the two top-level records are
    named differently: the record name is not part of the producer contract (the topic's subject is), so a writer
    schema otherwise compatible is resolved by the Avro alias rule instead of refused."""
    if not (isinstance(writer, dict) and isinstance(reader, dict)):
        return reader
    if writer.get("type") != "record" or reader.get("type") != "record":
        return reader
    writer_name, reader_name = _full_name(writer), _full_name(reader)
    if writer_name == reader_name or writer_name in reader.get("aliases", ()):
        return reader
    key = (id(writer), id(reader))
    cached = _aliased_readers.get(key)
    if cached is not None and cached[0] is writer and cached[1] is reader:
        return cached[2]
    document = _strip_parsed(reader)
    document["name"] = reader_name
    document.pop("namespace", None)
    document["aliases"] = [*document.get("aliases", []), writer_name]
    aliased = fastavro.parse_schema(document)
    # Cached for the long-lived parsed readers of the intake (a replay's reader is a fresh dict each time).
    if reader.get("__fastavro_parsed"):
        if len(_aliased_readers) >= _ALIASED_READERS_MAX:
            _aliased_readers.clear()
        _aliased_readers[key] = (writer, reader, aliased)
    return aliased


def _full_name(schema: dict[str, Any]) -> str:
    name = str(schema.get("name", ""))
    namespace = schema.get("namespace")
    return f"{namespace}.{name}" if namespace and "." not in name else name


def _strip_parsed(node: Any) -> Any:
    """A parsed fastavro schema back to a plain one (its bookkeeping keys removed)."""
    if isinstance(node, dict):
        return {k: _strip_parsed(v) for k, v in node.items() if k not in _FASTAVRO_KEYS}
    if isinstance(node, list):
        return [_strip_parsed(item) for item in node]
    return node


# Writer type -> the reader types it is promoted to (Avro specification, "Schema Resolution").
_PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}
_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "bytes": (bytes,),
    "int": (int,),
    "long": (int,),
    "float": (float,),
    "double": (float,),
    "boolean": (bool,),
}


def _branches(schema: Any) -> list[Any]:
    return list(schema) if isinstance(schema, list) else [schema]


def _base(schema: Any) -> str:
    """The type name a resolution compares: a primitive (also under a logical type), or a named type's name."""
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "enum", "fixed", "error"):
            return str(schema.get("name", kind))
        return _base(kind) if not isinstance(kind, str) or kind not in ("array", "map") else kind
    return str(schema)


def _describe(schema: Any) -> str:
    parts = []
    for branch in _branches(schema):
        logical = branch.get("logicalType") if isinstance(branch, dict) else None
        parts.append(f"{_base(branch)} ({logical})" if logical else _base(branch))
    return " or ".join(parts)


def _readable(writer_type: str, reader_types: list[str]) -> bool:
    return any(r in _PROMOTIONS.get(writer_type, {writer_type}) for r in reader_types)


def _holds(value: Any, kind: str) -> bool:
    """Whether a value read with the writer schema may have come from the branch ``kind``."""
    types = _PYTHON_TYPES.get(kind)
    if types is None:
        return True
    if kind != "boolean" and isinstance(value, bool):
        return False
    return isinstance(value, types)


def schema_mismatch(
    writer: Any, reader: dict[str, Any], raw: dict[str, Any], schema_id: int | None
) -> Rejection | None:
    """The first field of the stream's schema (``reader``) that a record written with ``writer`` cannot fill, as a
    ``schema_mismatch`` rejection naming the field and what differs; None when no field explains the failure.
    ``raw`` is the record read with the writer schema alone: a nullable writer field only fails on a null."""
    if not isinstance(writer, dict) or writer.get("type") != "record":
        return None
    writer_fields = {f["name"]: f for f in writer.get("fields", [])}
    static: Rejection | None = None
    for field in reader["fields"]:
        name = field["name"]
        written = writer_fields.get(name)
        if written is None:
            if "default" not in field:
                return Rejection(
                    SCHEMA_MISMATCH,
                    name,
                    f"{name}: the writer schema (id {schema_id}) has no field {name!r} and the stream's field has "
                    f"no default: add it to the producer's schema (GET /v1/streams/{{stream}}/schema)",
                    schema_id,
                )
            continue
        reader_types = [_base(b) for b in _branches(field["type"])]
        value = raw.get(name)
        if value is None and "null" not in reader_types:
            return Rejection(
                SCHEMA_MISMATCH,
                name,
                f"{name} is null: the writer schema (id {schema_id}) allows {_describe(written['type'])}, the "
                f"stream's field is not nullable ({_describe(field['type'])})",
                schema_id,
            )
        for branch in _branches(written["type"]):
            kind = _base(branch)
            if kind == "null" or _readable(kind, reader_types):
                continue
            rejection = Rejection(
                SCHEMA_MISMATCH,
                name,
                f"{name}: the writer schema (id {schema_id}) has {_describe(written['type'])}, the stream expects "
                f"{_describe(field['type'])}",
                schema_id,
            )
            if _holds(value, kind):
                return rejection
            static = static or rejection
    return static


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


# --- the Avro binary encoding, checked where fastavro is lenient ---------------------------------------------------


class _Malformed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _WireWalker:
    """Walks an Avro body along its writer schema without building values, for what fastavro's decoder lets pass
    silently: a varint of more than 64 bits (wrapped, e.g. a long of 2**63 read as 0, an event time far past 9999
    read as 1970) and a negative union branch index (read as Python's list[-1], i.e. the last branch)."""

    def __init__(self, body: bytes, named: dict[str, Any]) -> None:
        self.body, self.pos, self.named = body, 0, named
        self.field: str | None = None  # the top-level field being read

    def varint(self, overflow: str = NOT_AVRO) -> int:
        """The next zigzag varint; beyond 64 bits it is ``overflow`` (a value out of range, or a malformed length
        or index)."""
        unsigned, shift, body = 0, 0, self.body
        while True:
            if self.pos >= len(body):
                raise _Malformed(TRUNCATED, "the body ends inside a varint")
            byte = body[self.pos]
            self.pos += 1
            unsigned |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        if unsigned >= 2**64 or shift >= 70:  # more than 10 bytes: beyond 64 bits (Java's decoder refuses it too)
            raise _Malformed(overflow, f"a varint of {shift // 7 + 1} bytes is out of range for a 64-bit long")
        return (unsigned >> 1) ^ -(unsigned & 1)

    def skip(self, size: int) -> None:
        if size < 0:
            raise _Malformed(NOT_AVRO, f"a negative length ({size})")
        if self.pos + size > len(self.body):
            raise _Malformed(TRUNCATED, f"a length of {size} bytes goes past the end of the body")
        self.pos += size

    def walk(self, schema: Any) -> None:
        if isinstance(schema, list):  # a union: the branch index first
            index = self.varint()
            if not 0 <= index < len(schema):
                raise _Malformed(NOT_AVRO, f"union branch index {index} is not one of 0..{len(schema) - 1}")
            return self.walk(schema[index])
        if isinstance(schema, str):
            if schema in _FIXED_SIZES:
                return self.skip(_FIXED_SIZES[schema])
            if schema in ("int", "long"):
                self.varint(OUT_OF_RANGE)
                return None
            if schema in ("string", "bytes"):
                return self.skip(self.varint())
            return self.walk(self.named[schema])  # a named type defined earlier (KeyError: give up)
        kind = schema["type"]
        if kind == "record" or kind == "error":
            for field in schema["fields"]:
                self.walk(field["type"])
        elif kind == "enum":
            index = self.varint()
            if not 0 <= index < len(schema["symbols"]):
                raise _Malformed(NOT_AVRO, f"enum index {index} is not one of 0..{len(schema['symbols']) - 1}")
        elif kind == "fixed":
            self.skip(schema["size"])
        elif kind in ("array", "map"):
            while (count := self.varint()) != 0:
                if count < 0:  # a block with its size in bytes first
                    count = -count
                    self.varint()
                for _ in range(count):
                    if kind == "map":
                        self.skip(self.varint())
                    self.walk(schema["items" if kind == "array" else "values"])
        else:
            self.walk(kind)  # {"type": "long", "logicalType": ...} and the like
        return None

    def walk_flat(self, plan: list[tuple[str, tuple[str, ...], bool]]) -> None:
        """The fields of a flat record (primitives and unions of primitives): the common writer schema, walked
        without recursion."""
        for name, branches, union in plan:
            self.field = name
            if union:
                index = self.varint()
                if not 0 <= index < len(branches):
                    raise _Malformed(NOT_AVRO, f"union branch index {index} is not one of 0..{len(branches) - 1}")
                kind = branches[index]
            else:
                kind = branches[0]
            if kind == "int" or kind == "long":
                self.varint(OUT_OF_RANGE)
            elif kind == "string" or kind == "bytes":
                self.skip(self.varint())
            else:
                self.skip(_FIXED_SIZES[kind])


_FIXED_SIZES = {"null": 0, "boolean": 1, "float": 4, "double": 8}
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
# Flat plans by writer schema object (the codec keeps one parsed writer schema per id for its lifetime).
_flat_plans: dict[int, tuple[Any, list[tuple[str, tuple[str, ...], bool]] | None]] = {}


def _primitive(schema: Any) -> str | None:
    if isinstance(schema, dict):
        schema = schema.get("type")  # a logical type over a primitive, e.g. timestamp-millis
    return schema if isinstance(schema, str) and schema in _PRIMITIVES else None


def _flat_plan(writer: dict[str, Any]) -> list[tuple[str, tuple[str, ...], bool]] | None:
    cached = _flat_plans.get(id(writer))
    if cached is not None and cached[0] is writer:
        return cached[1]
    plan: list[tuple[str, tuple[str, ...], bool]] | None = []
    for field in writer["fields"]:
        union = isinstance(field["type"], list)
        branches = tuple(_primitive(b) for b in field["type"]) if union else (_primitive(field["type"]),)
        if None in branches:
            plan = None
            break
        assert plan is not None
        plan.append((field["name"], branches, union))  # type: ignore[arg-type]
    _flat_plans[id(writer)] = (writer, plan)
    return plan


def wire_problem(body: bytes, writer: Any, schema_id: int | None) -> Rejection | None:
    """A rejection when ``body`` breaks the Avro encoding in a way fastavro would not report, naming the top-level
    field it is in; None otherwise (including when the walker cannot follow the schema: fastavro judges then)."""
    if not isinstance(writer, dict) or writer.get("type") != "record":
        return None
    walker = _WireWalker(body, writer.get("__named_schemas", {}))
    try:
        plan = _flat_plan(writer)
        if plan is not None:
            walker.walk_flat(plan)
        else:
            for field in writer["fields"]:
                walker.field = field["name"]
                walker.walk(field["type"])
    except _Malformed as exc:
        return Rejection(exc.reason, walker.field, f"{walker.field}: {exc}", schema_id)
    except (KeyError, TypeError, RecursionError):
        return None
    return None
