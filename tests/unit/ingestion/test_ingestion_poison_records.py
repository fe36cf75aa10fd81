"""The per-record path turns every way a record's bytes can be wrong into a dead letter with its reason, and raises
only for what is not the record's fault (an unreachable registry): a raising record would block its partition."""

from __future__ import annotations

import io
import json
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from driftloop.contracts.pipeline import PipelineConfig, parse_pipeline
from driftloop.runtime.serde import AvroCodec
from driftloop.services.ingestion import validation as v
from driftloop.services.ingestion.decoding import decode_record, wire_problem
from driftloop.services.ingestion.landing import rows_to_table

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SCHEMA_ID = 7
YEAR_10000_MS = (datetime(9999, 12, 31, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1) + 86_400_000

PIPELINE_YAML = """
stream:
  name: payments
  fields:
    - {name: customer_id, type: string, nullable: false}
    - {name: event_time, type: timestamp}
    - {name: amount, type: double, nullable: false}
    - {name: age, type: int}
    - {name: count, type: int, nullable: false}
    - {name: visits, type: long}
    - {name: category, type: string}
    - {name: label, type: int}
  entity_key: customer_id
  event_time: event_time
  label: label
  max_future_seconds: 60
  max_record_bytes: 300
features:
  - {name: amount}
model: {name: payments-model}
"""


class Registry:
    """A registry that knows one schema, or is down (``up = False``)."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema, self.up = schema, True

    def get_schema(self, schema_id: int) -> Schema:
        if not self.up:
            raise SchemaRegistryError(503, 50301, "registry unavailable")
        if schema_id != SCHEMA_ID:
            raise SchemaRegistryError(404, 40403, f"schema {schema_id} not found")
        return Schema(json.dumps(self.schema), "AVRO")


@pytest.fixture(scope="module")
def pipeline() -> PipelineConfig:
    return parse_pipeline(PIPELINE_YAML)


def widened(node: Any) -> Any:
    """The same encoding with ints as longs and no logical types: the writer takes any integer anywhere."""
    if isinstance(node, dict):
        return {k: widened(item) for k, item in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [widened(item) for item in node]
    return "long" if node == "int" else node


def wire(pipeline: PipelineConfig, **changes: Any) -> bytes:
    record: dict[str, Any] = {
        "customer_id": "c1",
        "event_time": (NOW - EPOCH) // timedelta(milliseconds=1) - 60_000,
        "amount": 1.5,
        "age": 30,
        "count": 2,
        "visits": 3,
        "category": "food",
    }
    record.update(changes)
    out = io.BytesIO(struct.pack(">bI", 0, SCHEMA_ID))
    out.seek(0, io.SEEK_END)
    fastavro.schemaless_writer(out, fastavro.parse_schema(widened(pipeline.stream.avro_schema())), record)
    return out.getvalue()


def varint(value: int) -> bytes:
    unsigned = (value << 1) if value >= 0 else ((-value) << 1) - 1
    out = bytearray()
    while unsigned >= 0x80:
        out.append((unsigned & 0x7F) | 0x80)
        unsigned >>= 7
    out.append(unsigned)
    return bytes(out)


def decode(pipeline: PipelineConfig, value: bytes, registry: Registry | None = None) -> Any:
    codec = AvroCodec(registry or Registry(pipeline.stream.avro_schema()))  # type: ignore[arg-type]
    return decode_record(codec, value, fastavro.parse_schema(pipeline.stream.avro_schema()), pipeline, NOW)


def test_a_good_record_decodes_and_lands(pipeline: PipelineConfig) -> None:
    record, rejection = decode(pipeline, wire(pipeline, age=2**31 - 1, count=-(2**31), visits=2**63 - 1))
    assert rejection is None and record is not None
    assert rows_to_table([record], pipeline.stream).num_rows == 1


def body_after_customer_id(pipeline: PipelineConfig) -> bytes:
    return wire(pipeline, customer_id="")[6:]  # the header, then "" is one zero byte


@pytest.mark.parametrize(
    ("kind", "changes", "reason", "field", "message"),
    [
        ("nullable int beyond 32 bits", {"age": 2**31}, v.OUT_OF_RANGE, "age", "out of range"),
        ("nullable int below 32 bits", {"age": -(2**31) - 1}, v.OUT_OF_RANGE, "age", "out of range"),
        ("int beyond 32 bits", {"count": 2**40}, v.OUT_OF_RANGE, "count", "out of range"),
        ("event time past 9999", {"event_time": YEAR_10000_MS}, v.OUT_OF_RANGE, "event_time", "out of range"),
        ("event time 2**62 millis", {"event_time": 2**62}, v.OUT_OF_RANGE, "event_time", "out of range"),
        ("event time before year 1", {"event_time": -62_135_596_800_001}, v.OUT_OF_RANGE, "event_time", "range"),
    ],
)
def test_values_no_arrow_type_holds_are_dead_letters_with_field(
    pipeline: PipelineConfig, kind: str, changes: dict[str, Any], reason: str, field: str, message: str
) -> None:
    record, rejection = decode(pipeline, wire(pipeline, **changes))
    assert record is None and rejection is not None, kind
    assert (rejection.reason, rejection.field, rejection.schema_id) == (reason, field, SCHEMA_ID)
    assert message in rejection.message


def test_invalid_utf8_names_its_field(pipeline: PipelineConfig) -> None:
    for field, value in (("customer_id", b"a\xffc"), ("category", b"f\xc3o")):
        good = wire(pipeline, **{field: "abc" if field == "customer_id" else "foo"})
        bad = good.replace(b"abc" if field == "customer_id" else b"foo", value)
        record, rejection = decode(pipeline, bad)
        assert record is None and rejection is not None
        assert (rejection.reason, rejection.field) == (v.WRONG_TYPE, field)
        assert "UTF-8" in rejection.message


@pytest.mark.parametrize(
    ("kind", "length", "reason"),
    [
        ("negative string length", -3, v.NOT_AVRO),
        ("negative string length -1", -1, v.NOT_AVRO),
        ("string length past the end", 2**40, v.TRUNCATED),
        ("string length near 2**62", 2**62, v.TRUNCATED),
        ("string length beyond 64 bits", 2**70, v.NOT_AVRO),  # fastavro would wrap it to 64 bits
    ],
)
def test_absurd_declared_lengths_are_dead_letters(
    pipeline: PipelineConfig, kind: str, length: int, reason: str
) -> None:
    value = struct.pack(">bI", 0, SCHEMA_ID) + varint(length) + body_after_customer_id(pipeline)
    record, rejection = decode(pipeline, value)
    assert record is None and rejection is not None, kind
    assert (rejection.reason, rejection.field) == (reason, "customer_id"), (kind, rejection)


def replace_field(pipeline: PipelineConfig, name: str, encoded: bytes) -> bytes:
    """A record whose field ``name`` is ``encoded`` (raw bytes), the others as in ``wire``: the field is written
    with a marker value first, then its bytes are swapped."""
    marker = {"visits": 123456789, "event_time": 123456789, "age": 123456789}[name]
    value = wire(pipeline, **{name: marker})
    union = b"\x02" if pipeline.stream.field(name).nullable else b""
    needle = union + varint(marker)
    assert value.count(needle) == 1
    return value.replace(needle, encoded)


@pytest.mark.parametrize(
    ("kind", "name", "encoded", "reason"),
    [
        # fastavro keeps the low 64 bits of a longer varint: 2**63 would land as 0, 2**66 millis as 1970.
        ("long of 2**63", "visits", b"\x02" + varint(2**63), v.OUT_OF_RANGE),
        ("long below -(2**63)", "visits", b"\x02" + varint(-(2**63) - 1), v.OUT_OF_RANGE),
        ("event time of 2**66 millis", "event_time", b"\x02" + varint(2**66), v.OUT_OF_RANGE),
        ("eleven-byte varint", "visits", b"\x02" + b"\x80" * 10 + b"\x00", v.OUT_OF_RANGE),
        # fastavro reads branch -1 as Python's list[-1], the value branch.
        ("union branch -1", "age", b"\x01\x3c", v.NOT_AVRO),
        ("union branch 2", "age", b"\x04\x3c", v.NOT_AVRO),
    ],
)
def test_encodings_fastavro_lets_pass_are_dead_letters(
    pipeline: PipelineConfig, kind: str, name: str, encoded: bytes, reason: str
) -> None:
    record, rejection = decode(pipeline, replace_field(pipeline, name, encoded))
    assert record is None and rejection is not None, kind
    assert (rejection.reason, rejection.field) == (reason, name), (kind, rejection)


def test_the_longest_longs_still_decode(pipeline: PipelineConfig) -> None:
    for extreme in (2**63 - 1, -(2**63)):
        record, rejection = decode(pipeline, replace_field(pipeline, "visits", b"\x02" + varint(extreme)))
        assert rejection is None and record is not None and record["visits"] == extreme


def test_any_decoder_error_is_a_dead_letter_not_an_exception(pipeline: PipelineConfig) -> None:
    """Every single-byte corruption and every truncation of a record: a row that lands, or a rejection."""
    good = wire(pipeline)
    values = [good[:i] for i in range(len(good))]
    values += [good[:i] + bytes([b]) + good[i + 1 :] for i in range(5, len(good)) for b in (0x00, 0x7F, 0x80, 0xFF)]
    for value in values:
        record, rejection = decode(pipeline, value)
        assert (record is None) != (rejection is None)
        if record is not None:
            rows_to_table([record], pipeline.stream)  # lands without raising
        else:
            assert rejection is not None and rejection.reason in v.REASONS


def test_an_unreachable_registry_raises_so_that_the_record_is_read_again(pipeline: PipelineConfig) -> None:
    registry = Registry(pipeline.stream.avro_schema())
    registry.up = False
    with pytest.raises(SchemaRegistryError):
        decode(pipeline, wire(pipeline, age=2**31), registry)
    registry.up = True
    _, rejection = decode(pipeline, wire(pipeline, age=2**31), registry)
    assert rejection is not None and rejection.reason == v.OUT_OF_RANGE
    unknown = struct.pack(">bI", 0, SCHEMA_ID + 1) + wire(pipeline)[5:]
    _, rejection = decode(pipeline, unknown, registry)
    assert rejection is not None and rejection.reason == v.UNKNOWN_SCHEMA_ID


NESTED_SCHEMA = {
    "type": "record",
    "name": "Outer",
    "namespace": "test",
    "fields": [
        {"name": "tags", "type": {"type": "array", "items": "long"}},
        {"name": "attrs", "type": {"type": "map", "values": ["null", "string"]}},
        {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["red", "green"]}},
        {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [{"name": "n", "type": "long"}]}},
        {"name": "again", "type": ["null", "Inner"]},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 2}},
    ],
}


def nested_body(**changes: Any) -> bytes:
    record = {"tags": [1, 2], "attrs": {"a": "x", "b": None}, "colour": "green", "inner": {"n": 5}, "again": None}
    record["digest"] = b"ok"
    record.update(changes)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(NESTED_SCHEMA), record)
    return out.getvalue()


def test_the_wire_check_follows_any_writer_schema() -> None:
    writer = fastavro.parse_schema(NESTED_SCHEMA)
    assert wire_problem(nested_body(), writer, 1) is None
    assert wire_problem(nested_body(again={"n": -(2**63)}), writer, 1) is None
    long_in_array = nested_body(tags=[123456789]).replace(varint(123456789), varint(2**64))
    problem = wire_problem(long_in_array, writer, 1)
    assert problem is not None and (problem.reason, problem.field) == (v.OUT_OF_RANGE, "tags")
    empty = nested_body(colour="red", tags=[], attrs={})
    assert empty.startswith(b"\x00\x00\x00")  # empty array, empty map, enum index 0
    bad_enum = b"\x00\x00\x06" + empty[3:]  # enum index 3 of 2 symbols
    problem = wire_problem(bad_enum, writer, 1)
    assert problem is not None and (problem.reason, problem.field) == (v.NOT_AVRO, "colour")
    problem = wire_problem(nested_body()[:-1], writer, 1)
    assert problem is not None and (problem.reason, problem.field) == (v.TRUNCATED, "digest")
