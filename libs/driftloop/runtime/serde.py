"""Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary body.

Schemas are registered and looked up through the stock ``confluent_kafka`` SchemaRegistryClient, so the
same code runs against driftloop's registry and Confluent's. Decoding errors carry a reason code that
ingestion puts on dead letters.
"""

from __future__ import annotations

import io
import json
import math
import struct
import threading
from typing import Any

import fastavro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from driftloop.errors import SchemaError, WireFormatError

MAGIC_BYTE = 0
HEADER = struct.Struct(">bI")


class AvroCodec:
    """Encode and decode Avro records in the Confluent wire format, caching schemas by id and subject."""

    def __init__(self, registry: SchemaRegistryClient) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._ids_by_subject: dict[tuple[str, str], int] = {}
        self._parsed_by_id: dict[int, Any] = {}
        self._parsed_by_json: dict[str, Any] = {}

    @classmethod
    def from_url(cls, url: str) -> AvroCodec:
        return cls(SchemaRegistryClient({"url": url}))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AvroCodec:
        """A codec on a SchemaRegistryClient built from ``config`` (url plus e.g. bearer auth properties)."""
        return cls(SchemaRegistryClient(config))

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        schema_json = json.dumps(schema)
        key = (subject, schema_json)
        with self._lock:
            cached = self._ids_by_subject.get(key)
        if cached is not None:
            return cached
        try:
            schema_id = self.registry.register_schema(subject, Schema(schema_json, "AVRO"))
        except SchemaRegistryError as exc:
            raise SchemaError(f"registering a schema under {subject!r} failed: {exc}") from exc
        with self._lock:
            self._ids_by_subject[key] = schema_id
        return schema_id

    def _parsed(self, schema: dict[str, Any]) -> Any:
        if schema.get("__fastavro_parsed"):
            return schema  # parsed once by the caller (hot paths): skip the per-record cache key
        key = json.dumps(schema, sort_keys=True)
        parsed = self._parsed_by_json.get(key)
        if parsed is None:
            parsed = fastavro.parse_schema(schema)
            self._parsed_by_json[key] = parsed
        return parsed

    def writer_schema(self, schema_id: int) -> Any:
        parsed = self._parsed_by_id.get(schema_id)
        if parsed is not None:
            return parsed
        try:
            schema = self.registry.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if getattr(exc, "http_status_code", None) == 404:
                raise WireFormatError("unknown_schema_id", f"schema id {schema_id} is not registered") from exc
            raise
        if schema.schema_str is None:
            raise WireFormatError("unknown_schema_id", f"schema id {schema_id} has no schema text")
        parsed = fastavro.parse_schema(json.loads(schema.schema_str))
        self._parsed_by_id[schema_id] = parsed
        return parsed

    def writer(self, subject: str, schema: dict[str, Any]) -> RecordWriter:
        """The encoder of ``schema`` under ``subject`` (registered, parsed): keep it to encode many records (the
        schema is looked up once, not per record)."""
        schema_id = self.register(subject, schema)
        return RecordWriter(subject, HEADER.pack(MAGIC_BYTE, schema_id), self._parsed(schema))

    def encode(self, subject: str, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
        return self.writer(subject, schema).encode(record)

    def decode(self, data: bytes, reader_schema: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """Return (writer schema id, record), read into ``reader_schema`` if given (schema resolution)."""
        if data is None or len(data) < HEADER.size:
            raise WireFormatError("truncated", f"message of {len(data or b'')} bytes is shorter than the header")
        magic, schema_id = HEADER.unpack_from(data)
        if magic != MAGIC_BYTE:
            raise WireFormatError("bad_magic_byte", f"magic byte is {magic}, expected {MAGIC_BYTE}")
        writer = self.writer_schema(schema_id)
        reader = self._parsed(reader_schema) if reader_schema is not None else None
        body = io.BytesIO(data[HEADER.size :])
        try:
            record = fastavro.schemaless_reader(body, writer, reader)
        except EOFError as exc:
            raise WireFormatError("truncated", f"Avro body ended early (schema id {schema_id})") from exc
        except (fastavro.read.SchemaResolutionError, ValueError, TypeError, IndexError) as exc:
            raise WireFormatError("not_avro", f"body is not valid Avro for schema id {schema_id}: {exc}") from exc
        if body.tell() != len(data) - HEADER.size:
            raise WireFormatError("not_avro", f"{len(data) - HEADER.size - body.tell()} trailing bytes after record")
        return schema_id, record  # type: ignore[return-value]


# The union branch a Python scalar is written as, when the union has it.
_BRANCH_OF = {type(None): "null", bool: "boolean", int: "long", float: "double", str: "string", bytes: "bytes"}


def _map_unions(parsed: Any) -> dict[str, dict[type, str]]:
    """Top-level fields that are maps of a union of primitives (e.g. PredictionLogged's ``inputs``), with the branch
    each Python type is written as. fastavro tries a union's branches in turn for every value (a few microseconds
    each); named with its branch (fastavro's tuple notation) a value is written at once, as the same bytes."""
    found: dict[str, dict[type, str]] = {}
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        return found
    for field in parsed["fields"]:
        kind = field["type"]
        if isinstance(kind, dict) and kind.get("type") == "map" and isinstance(kind["values"], list):
            branches = set(kind["values"])
            if branches <= set(_BRANCH_OF.values()):
                found[field["name"]] = {t: name for t, name in _BRANCH_OF.items() if name in branches}
    return found


class RecordWriter:
    """Records of one registered schema in the wire format (``AvroCodec.writer``)."""

    __slots__ = ("header", "map_unions", "parsed", "subject")

    def __init__(self, subject: str, header: bytes, parsed: Any) -> None:
        self.subject = subject
        self.header = header
        self.parsed = parsed
        self.map_unions = _map_unions(parsed)

    def encode(self, record: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        out.write(self.header)
        if self.map_unions:
            record = self._branches_named(record)
        try:
            fastavro.schemaless_writer(out, self.parsed, record)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise SchemaError(f"record does not match the schema of {self.subject!r}: {exc}") from exc
        return out.getvalue()

    def _branches_named(self, record: dict[str, Any]) -> dict[str, Any]:
        named = dict(record)
        for name, branch_of in self.map_unions.items():
            values = record.get(name)
            if isinstance(values, dict):
                # A type the union lacks (or a subclass) is left as it is: fastavro then checks it as before.
                named[name] = {k: (b, v) if (b := branch_of.get(type(v))) else v for k, v in values.items()}
        return named


_JSON_AS_IS = frozenset({str, int, bool, type(None)})


def json_safe(value: Any) -> Any:
    """``value`` as JSON can hold it (PostgreSQL's json type has no NaN/Infinity): non-finite floats become None,
    bytes text, datetimes ISO strings."""
    # Plain leaves are kept without a call (checked inline): the event log converts every field of every event.
    if type(value) in _JSON_AS_IS or (type(value) is float and math.isfinite(value)):
        return value
    if isinstance(value, dict):
        return {
            k: v if type(v) in _JSON_AS_IS or (type(v) is float and math.isfinite(v)) else json_safe(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [v if type(v) in _JSON_AS_IS or (type(v) is float and math.isfinite(v)) else json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON (and PostgreSQL's json type) has no NaN/Infinity, e.g. an unscorable gate score
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
