"""Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary body.

Schemas are registered and looked up through the stock ``confluent_kafka`` SchemaRegistryClient, so the
same code runs against driftloop's registry and Confluent's. Decoding errors carry a reason code that
ingestion puts on dead letters.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import struct
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import fastavro
import numpy as np
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

    def batch(self, varying: Sequence[str]) -> BatchWriter:
        """Many records that differ only in ``varying`` fields, encoded together (``BatchWriter``)."""
        return BatchWriter(self, varying)

    def _branches_named(self, record: dict[str, Any]) -> dict[str, Any]:
        named = dict(record)
        for name, branch_of in self.map_unions.items():
            values = record.get(name)
            if isinstance(values, dict):
                # A type the union lacks (or a subclass) is left as it is: fastavro then checks it as before.
                named[name] = {k: (b, v) if (b := branch_of.get(type(v))) else v for k, v in values.items()}
        return named


# --- records by the batch ----------------------------------------------------------------------------------------
# fastavro checks and dispatches on the schema for every value of every record: ~13 us for a PredictionLogged row,
# most of it the same work for each row of a request. ``BatchWriter`` encodes the fields a batch shares once and
# the others with encoders compiled from the schema once (plain Python over bytes: a few microseconds a row).

_DOUBLE = struct.Struct("<d").pack
_FLOAT = struct.Struct("<f").pack
_INT_RANGE = (-(2**31), 2**31 - 1)
_LONG_RANGE = (-(2**63), 2**63 - 1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _varint(zigzagged: int) -> bytes:
    out = bytearray()
    while zigzagged > 0x7F:
        out.append(zigzagged & 0x7F | 0x80)
        zigzagged >>= 7
    out.append(zigzagged)
    return bytes(out)


_SMALL_VARINTS = tuple(_varint(z) for z in range(1 << 14))  # zigzagged values below 2**14 (row indexes, lengths)


def _long_bytes(value: int) -> bytes:
    zigzagged = (value << 1) ^ (value >> 63)
    return _SMALL_VARINTS[zigzagged] if zigzagged < 16384 else _varint(zigzagged)


def _string_bytes(value: str) -> bytes:
    data = value.encode()
    return _long_bytes(len(data)) + data


Encoder = Callable[[Any], bytes]


def _integer(bounds: tuple[int, int]) -> Encoder:
    low, high = bounds

    def encode(value: Any) -> bytes:
        if type(value) is not int or not low <= value <= high:
            raise ValueError(f"{value!r} is not an integer in [{low}, {high}]")
        return _long_bytes(value)

    return encode


def _timestamp_millis(value: Any) -> bytes:
    if isinstance(value, datetime):
        delta = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - _EPOCH
        value = delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000
    if type(value) is not int:
        raise ValueError(f"{value!r} is not a timestamp")
    return _long_bytes(value)


def _string(value: Any) -> bytes:
    if type(value) is not str:
        raise ValueError(f"{value!r} is not a string")
    return _string_bytes(value)


def _bytes(value: Any) -> bytes:
    if type(value) is not bytes:
        raise ValueError(f"{value!r} is not bytes")
    return _long_bytes(len(value)) + value


def _double(value: Any) -> bytes:
    if type(value) is float or type(value) is int:
        return _DOUBLE(value)
    raise ValueError(f"{value!r} is not a number")


def _float(value: Any) -> bytes:
    if type(value) is float or type(value) is int:
        return _FLOAT(value)
    raise ValueError(f"{value!r} is not a number")


def _null(value: Any) -> bytes:
    if value is not None:
        raise ValueError(f"{value!r} is not null")
    return b""


def _boolean(value: Any) -> bytes:
    if type(value) is not bool:
        raise ValueError(f"{value!r} is not a boolean")
    return b"\x01" if value else b"\x00"


_PRIMITIVES: dict[str, Encoder] = {
    "null": _null,
    "boolean": _boolean,
    "int": _integer(_INT_RANGE),
    "long": _integer(_LONG_RANGE),
    "float": _float,
    "double": _double,
    "string": _string,
    "bytes": _bytes,
}


# Per Python type, the branches that can hold it, in the order tried (an int fits long, int, then double).
_BRANCHES_BY_TYPE: dict[type, tuple[str, ...]] = {
    type(None): ("null",),
    bool: ("boolean",),
    int: ("long", "int", "double", "float"),
    float: ("double", "float"),
    str: ("string",),
    bytes: ("bytes",),
}


def _union_branches(branches: list[Any]) -> dict[type, Encoder]:
    """A union of primitives: per Python type, the encoder of its branch (``_BRANCH_OF``: what fastavro picks),
    branch index included."""
    names = [b if isinstance(b, str) else None for b in branches]
    if any(name not in _PRIMITIVES for name in names):
        raise ValueError(f"union {branches} has non-primitive branches")
    index = {name: _long_bytes(i) for i, name in enumerate(names) if name is not None}
    # The type already chose the branch: only what the type does not guarantee is checked (an int's range).
    plain: dict[str, Encoder] = {
        "null": lambda _: index["null"],
        "boolean": lambda value: index["boolean"] + (b"\x01" if value else b"\x00"),
        "long": lambda value: index["long"] + _PRIMITIVES["long"](value),
        "double": lambda value: index["double"] + _DOUBLE(value),
        "string": lambda value: index["string"] + _string_bytes(value),
        "bytes": lambda value: index["bytes"] + _long_bytes(len(value)) + value,
    }
    if "int" in index:
        plain["int"] = lambda value: index["int"] + _PRIMITIVES["int"](value)
    if "float" in index:
        plain["float"] = lambda value: index["float"] + _FLOAT(value)
    by_type: dict[type, Encoder] = {}
    # The first branch fastavro would take for a value of each type.
    for kind, names_in_order in _BRANCHES_BY_TYPE.items():
        name = next((n for n in names_in_order if n in index), None)
        if name is not None:
            by_type[kind] = plain[name]
    return by_type


def _union(branches: list[Any]) -> Encoder:
    by_type = _union_branches(branches)

    def encode(value: Any) -> bytes:
        branch = by_type.get(type(value))
        if branch is None:
            raise ValueError(f"{value!r} fits no branch of {branches}")
        return branch(value)

    return encode


def _map(values: Any) -> Encoder:
    # A union's branch is chosen inline (the common case: PredictionLogged's inputs), else the values' encoder.
    by_type = _union_branches(values) if isinstance(values, list) else None
    encode_value = _compile(values)
    keys: dict[str, bytes] = {}  # the encoded keys, reused (maps of one schema tend to have the same keys)

    def encode(value: Any) -> bytes:
        if not isinstance(value, dict):
            raise ValueError(f"{value!r} is not a map")
        if not value:
            return b"\x00"
        parts = [_long_bytes(len(value))]
        append = parts.append
        for key, item in value.items():
            encoded = keys.get(key)
            if encoded is None:
                encoded = _string(key)
                if len(keys) < 4096:
                    keys[key] = encoded
            append(encoded)
            append(by_type[type(item)](item) if by_type is not None and type(item) in by_type else encode_value(item))
        append(b"\x00")
        return b"".join(parts)

    return encode


ColumnEncoder = Callable[[Sequence[Any]], list[bytes]]


def _column_encoder(schema: Any) -> ColumnEncoder:
    """How ``BatchWriter`` encodes one varying field for all records: value by value, except maps that may hold
    doubles (``_double_maps``)."""
    encode = _compile(schema)
    if isinstance(schema, dict) and schema.get("type") == "map":
        values = schema["values"]
        branches = values if isinstance(values, list) else [values]
        if "double" in branches:
            branch = _long_bytes(branches.index("double")) if isinstance(values, list) else b""

            def encode_maps(column: Sequence[Any]) -> list[bytes]:
                fast = _double_maps(column, branch) if len(column) >= _DOUBLE_MAPS_MIN else None
                return fast if fast is not None else list(map(encode, column))

            return encode_maps
    return lambda column: list(map(encode, column))


_DOUBLE_MAPS_MIN = 8  # below, numpy's setup costs more than it saves


def _double_maps(column: Sequence[Any], branch: bytes) -> list[bytes] | None:
    """A column of maps with the same keys in the same order and only floats (a request's rows of numbers): every
    map's bytes written by numpy in one go (the same bytes as one by one), or None for any other column."""
    first = column[0]
    if type(first) is not dict or not first:
        return None
    keys = tuple(first)
    if any(type(m) is not dict or tuple(m) != keys for m in column):
        return None
    rows = [list(m.values()) for m in column]
    if set(map(type, itertools.chain.from_iterable(rows))) != {float}:
        return None
    count = len(column)
    numbers = np.array(rows, dtype="<f8").view(np.uint8).reshape(count, len(keys), 8)
    # One map: its entry count, per entry the key, the branch and 8 bytes of double, and the end of blocks.
    template = bytearray(_long_bytes(len(keys)))
    offsets = []
    for key in keys:
        template += _string(key) + branch
        offsets.append(len(template))
        template += bytes(8)
    template += b"\x00"
    width = len(template)
    out = np.empty((count, width), dtype=np.uint8)
    out[:] = np.frombuffer(bytes(template), dtype=np.uint8)
    for j, offset in enumerate(offsets):
        out[:, offset : offset + 8] = numbers[:, j, :]
    blob = out.tobytes()
    return [blob[start : start + width] for start in range(0, count * width, width)]


def _array(items: Any) -> Encoder:
    encode_item = _compile(items)

    def encode(value: Any) -> bytes:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{value!r} is not an array")
        if not value:
            return b"\x00"
        return b"".join([_long_bytes(len(value)), *map(encode_item, value), b"\x00"])

    return encode


def _compile(schema: Any) -> Encoder:
    """The encoder of a (parsed) schema of primitives, timestamp-millis, unions of primitives, maps and arrays;
    ValueError for anything else (records inside them, enums, fixed: ``BatchWriter`` is then not used)."""
    if isinstance(schema, str) and schema in _PRIMITIVES:
        return _PRIMITIVES[schema]
    if isinstance(schema, list):
        return _union(schema)
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "long" and schema.get("logicalType") == "timestamp-millis":
            return _timestamp_millis
        if kind == "map":
            return _map(schema["values"])
        if kind == "array":
            return _array(schema["items"])
        if isinstance(kind, str) and kind in _PRIMITIVES and "logicalType" not in schema:
            return _PRIMITIVES[kind]
    raise ValueError(f"no batch encoder for schema {schema!r}")


def _leaves(record: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """A record's fields in writing order, nested records flattened (``envelope.event_id``)."""
    leaves: list[tuple[str, Any]] = []
    for field in record["fields"]:
        kind = field["type"]
        if isinstance(kind, dict) and kind.get("type") == "record":
            leaves.extend(_leaves(kind, f"{prefix}{field['name']}."))
        else:
            leaves.append((f"{prefix}{field['name']}", kind))
    return leaves


class BatchWriter:
    """Records of one schema that share most of their values (e.g. the rows of one answered request), in the wire
    format: the same bytes as ``RecordWriter.encode`` (a test compares them). The fields named ``varying`` (dotted
    paths into nested records) come per record, the others once per batch (``shared``, by path). Built by
    ``RecordWriter.batch``; a schema it cannot compile raises ValueError there (use ``RecordWriter.encode``)."""

    def __init__(self, writer: RecordWriter, varying: Sequence[str]) -> None:
        self.subject = writer.subject
        leaves = _leaves(writer.parsed)
        paths = [path for path, _ in leaves]
        unknown = set(varying) - set(paths)
        if unknown:
            raise ValueError(f"{sorted(unknown)} are not fields of {writer.subject!r}")
        self.varying = tuple(varying)
        self._encoders = {path: _compile(schema) for path, schema in leaves}
        self._columns = {path: _column_encoder(schema) for path, schema in leaves if path in self.varying}
        # Writing order: runs of shared fields (encoded per batch) between varying ones (per record).
        self._plan: list[tuple[list[str], int]] = []  # (shared paths before it, index of the varying value)
        shared: list[str] = []
        for path in paths:
            if path in self.varying:
                self._plan.append((shared, self.varying.index(path)))
                shared = []
            else:
                shared.append(path)
        self._tail = shared
        self._header = writer.header

    def encode(self, shared: Mapping[str, Any], columns: Sequence[Sequence[Any]]) -> list[bytes]:
        """One message per record: ``columns`` give the ``varying`` fields' values (one sequence per field, in that
        order, one value per record), ``shared`` the other fields' values by path. Encoded column by column, and
        each message joined from its pieces (C loops: ``map``, ``zip``, ``bytes.join``)."""
        encoders = self._encoders
        if len(columns) != len(self.varying) or len({len(c) for c in columns}) > 1:
            raise ValueError(f"{len(self.varying)} columns of one length expected for {self.varying}")
        try:
            chunks = [b"".join(encoders[p](shared[p]) for p in paths) for paths, _ in self._plan]
            tail = b"".join(encoders[p](shared[p]) for p in self._tail)
            chunks[0] = self._header + chunks[0]
            pieces: list[Iterable[bytes]] = []
            for chunk, (_, i) in zip(chunks, self._plan, strict=True):
                if chunk:
                    pieces.append(itertools.repeat(chunk))
                pieces.append(self._columns[self.varying[i]](columns[i]))
            if tail:
                pieces.append(itertools.repeat(tail))
            return list(map(b"".join, zip(*pieces, strict=False)))  # the repeated chunks never end
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, struct.error) as exc:
            raise SchemaError(f"record does not match the schema of {self.subject!r}: {exc}") from exc


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
