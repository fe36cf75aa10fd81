"""The columnar fast path of the Kafka intake gives what the per-record path gives: random batches mixing good
records and every bad kind an Avro record can have land the same rows and dead-letter the same records with the
same (reason, field), whichever path takes them."""

from __future__ import annotations

import io
import json
import random
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pyarrow as pa
import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from driftloop.contracts.pipeline import PipelineConfig, parse_pipeline
from driftloop.runtime.serde import AvroCodec
from driftloop.services.ingestion import validation as v
from driftloop.services.ingestion.columnar import decode_batch
from driftloop.services.ingestion.decoding import decode_record
from driftloop.services.ingestion.landing import rows_to_table

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
READER_ID, EVOLVED_ID, UNKNOWN_ID = 1, 2, 99

PIPELINE_YAML = """
stream:
  name: payments
  fields:
    - {name: customer_id, type: string, nullable: false}
    - {name: event_time, type: timestamp}
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
  - {rule: range, field: visits, max: 100}
  - {rule: range, field: ratio, min: 0, max: 1}
  - {rule: allowed_values, field: category, values: [food, travel, 7]}
  - {rule: allowed_values, field: label, values: [0, true, 2.0]}
  - {rule: allowed_values, field: vip, values: [false, 1]}
features:
  - {name: amount}
model: {name: payments-model}
"""


class InMemoryRegistry:
    """The one call AvroCodec.decode makes of a registry: schema by id (404 for unknown ids)."""

    def __init__(self, schemas: dict[int, dict[str, Any]]) -> None:
        self.schemas = schemas

    def get_schema(self, schema_id: int) -> Schema:
        if schema_id not in self.schemas:
            raise SchemaRegistryError(404, 40403, f"schema {schema_id} not found")
        return Schema(json.dumps(self.schemas[schema_id]), "AVRO")


@pytest.fixture(scope="module")
def pipeline() -> PipelineConfig:
    return parse_pipeline(PIPELINE_YAML)


def evolved_schema(pipeline: PipelineConfig) -> dict[str, Any]:
    """An older writer schema: without the nullable ``visits`` field (the reader fills in its default)."""
    schema = pipeline.stream.avro_schema()
    return {**schema, "fields": [f for f in schema["fields"] if f["name"] != "visits"]}


@pytest.fixture(scope="module")
def codec(pipeline: PipelineConfig) -> AvroCodec:
    reader = pipeline.stream.avro_schema()
    return AvroCodec(InMemoryRegistry({READER_ID: reader, EVOLVED_ID: evolved_schema(pipeline)}))  # type: ignore[arg-type]


def good_record(rng: random.Random) -> dict[str, Any]:
    return {
        "customer_id": f"c{rng.randrange(100)}" + rng.choice(["", "é", "☃", "🙂"]),
        "event_time": NOW - timedelta(milliseconds=rng.randrange(0, 10**10)),
        "amount": rng.choice([0.0, 1000.0, rng.uniform(0, 1000)]),
        "age": rng.choice([None, 0, -5, 2**31 - 1, -(2**31), rng.randrange(100)]),
        "visits": rng.choice([None, -(2**40), 100, rng.randrange(100)]),
        "ratio": rng.choice([None, 0.0, 1.0, 0.25]),
        "vip": rng.choice([None, False]),
        "category": rng.choice(["food", "travel"]),
        "label": rng.choice([None, 0, 2]),
    }


def framed(schema: dict[str, Any], record: dict[str, Any], schema_id: int = READER_ID) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def widened(node: Any) -> Any:
    """A schema with the same encoding that lets the writer put any integer in an int or a timestamp: ints as
    longs, no logical types (fastavro checks union branches against the declared type and range)."""
    if isinstance(node, dict):
        return {k: widened(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [widened(item) for item in node]
    return "long" if node == "int" else node


def poison(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    """``record`` framed by the widened schema: byte for byte what the reader schema's writer would write."""
    millis = {k: (v - EPOCH) // timedelta(milliseconds=1) if isinstance(v, datetime) else v for k, v in record.items()}
    return framed(widened(schema), millis)


def varint(value: int) -> bytes:
    """A zigzag varint of any width."""
    unsigned = (value << 1) if value >= 0 else ((-value) << 1) - 1
    out = bytearray()
    while unsigned >= 0x80:
        out.append((unsigned & 0x7F) | 0x80)
        unsigned >>= 7
    out.append(unsigned)
    return bytes(out)


POISON_FROM = 31  # bad_values from here on are poison records: every one must be refused by the per-record path


def bad_values(pipeline: PipelineConfig, rng: random.Random) -> list[tuple[str, bytes]]:
    """(kind, message value): one of each way a record on the topic can be wrong, or odd but right."""
    schema = pipeline.stream.avro_schema()
    good = framed(schema, good_record(rng))

    def with_(**changes: Any) -> bytes:
        return framed(schema, {**good_record(rng), **changes})

    def poisoned(**changes: Any) -> bytes:
        return poison(schema, {**good_record(rng), **changes})

    def swapped(name: str, encoded: bytes) -> bytes:
        """A record whose nullable field ``name`` is ``encoded`` (raw bytes after a marker value is written)."""
        marker = 123456789
        value = poisoned(**{name: marker})
        needle = b"\x02" + varint(marker)
        assert value.count(needle) == 1
        return value.replace(needle, encoded)

    never = pipeline.stream.max_future_seconds + 1
    return [
        ("truncated header", good[:3]),
        ("empty", b""),
        ("truncated body", good[:-1]),
        ("trailing bytes", good + b"\x00"),
        ("bad magic byte", b"\x01" + good[1:]),
        ("unknown schema id", struct.pack(">bI", 0, UNKNOWN_ID) + good[5:]),
        ("garbage body", good[:5] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))),
        ("bad union index", good[:5] + b"\x06" + good[6:]),
        ("invalid utf-8", with_(customer_id="abc").replace(b"abc", b"a\xffc")),
        ("too large", with_(customer_id="x" * 400)),
        ("missing event time", with_(event_time=None)),
        ("future event time", with_(event_time=NOW + timedelta(seconds=never))),
        ("future by one millisecond", with_(event_time=NOW + timedelta(seconds=never - 1, milliseconds=1001))),
        ("at the horizon", with_(event_time=NOW + timedelta(seconds=never - 1))),
        ("category null (not_null)", with_(category=None)),
        ("amount below range", with_(amount=-0.01)),
        ("amount above range", with_(amount=1000.5)),
        ("amount NaN", with_(amount=float("nan"))),
        ("amount infinite", with_(amount=float("inf"))),
        ("visits above range", with_(visits=101)),
        ("visits huge", with_(visits=2**60)),
        ("ratio NaN", with_(ratio=float("nan"))),
        ("ratio above range (float32)", with_(ratio=1.0000001)),
        ("category not allowed", with_(category="games")),
        ("label not allowed", with_(label=5)),
        ("label 1 is not true", with_(label=1)),
        ("vip true is not 1", with_(vip=True)),
        ("evolved writer schema", framed(evolved_schema(pipeline), good_record(rng), EVOLVED_ID)),
        ("evolved writer, bad", framed(evolved_schema(pipeline), {**good_record(rng), "amount": -1.0}, EVOLVED_ID)),
        ("boolean byte 2", with_(vip=False, category="food", label=None)[:-9] + b"\x02\x02\x02\x08food\x00"),
        ("non-canonical varint", with_(label=None)[:-1] + b"\x80\x00"),
        # Poison records: decoded (or half-decoded) by fastavro, but no Arrow type holds them.
        ("int beyond 32 bits", poisoned(age=2**31)),
        ("int below 32 bits", poisoned(age=-(2**31) - 1)),
        ("int label far beyond 32 bits", poisoned(label=2**40)),
        ("event time past year 9999", poisoned(event_time=253_402_300_800_000)),
        ("event time 2**62 millis", poisoned(event_time=2**62)),
        ("event time before year 1", poisoned(event_time=-62_135_596_800_001)),
        ("negative string length", good[:5] + varint(-3) + good[6:]),
        ("huge string length", good[:5] + varint(2**40) + good[6:]),
        ("long beyond 64 bits", swapped("visits", b"\x02" + varint(2**63))),
        ("event time of 2**66 millis", swapped("event_time", b"\x02" + varint(2**66))),
        ("eleven-byte varint", swapped("visits", b"\x02" + b"\x80" * 10 + b"\x00")),
        ("union branch -1", swapped("age", b"\x01\x3c")),
        ("union branch 2", swapped("age", b"\x04\x3c")),
        ("invalid utf-8 in a nullable string", with_(category="foo").replace(b"foo", b"f\xc3o")),
    ]


def slow_path(codec: AvroCodec, pipeline: PipelineConfig, value: bytes) -> tuple[dict[str, Any] | None, Any]:
    """What KafkaIntake.handle does with one record: (row, None) or (None, (reason, field))."""
    record, rejection = decode_record(codec, value, fastavro.parse_schema(pipeline.stream.avro_schema()), pipeline, NOW)
    if rejection is not None:
        return None, (rejection.reason, rejection.field)
    return record, None


def landed_rows(pipeline: PipelineConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return rows_to_table(rows, pipeline.stream).to_pylist()


@pytest.mark.parametrize("seed", range(8))
def test_fast_path_lands_and_dead_letters_what_the_per_record_path_does(
    pipeline: PipelineConfig, codec: AvroCodec, seed: int
) -> None:
    rng = random.Random(seed)
    schema = pipeline.stream.avro_schema()
    batch: list[tuple[str, bytes]] = [("good", framed(schema, good_record(rng))) for _ in range(300)]
    batch += bad_values(pipeline, rng) * 2
    rng.shuffle(batch)
    values = [value for _, value in batch]

    expected = [slow_path(codec, pipeline, value) for value in values]
    poison_kinds = {kind for kind, _ in bad_values(pipeline, rng)[POISON_FROM:]}
    assert all(expected[i][1] is not None for i, (kind, _) in enumerate(batch) if kind in poison_kinds)

    fast = decode_batch(values, pipeline, lambda sid: sid == READER_ID, NOW)
    assert fast.table.schema == rows_to_table([], pipeline.stream).schema
    fast_rows = iter(fast.table.to_pylist())
    got_rows, got_letters, expected_rows, expected_letters = [], [], [], []
    for i, value in enumerate(values):
        if fast.accepted[i]:
            got_rows.append(next(fast_rows))
        else:  # what the intake does with a record the fast path leaves: the per-record path
            row, letter = slow_path(codec, pipeline, value)
            if letter is not None:
                got_letters.append((i, letter))
            else:
                got_rows.extend(landed_rows(pipeline, [row]))
        row, letter = expected[i]
        if letter is not None:
            expected_letters.append((i, letter))
        else:
            expected_rows.extend(landed_rows(pipeline, [row]))
    assert next(fast_rows, None) is None
    assert got_letters == expected_letters
    assert json.dumps(got_rows, default=str) == json.dumps(expected_rows, default=str)
    # The fast path did the work: every good record of the reader schema, and no refused record, went through it.
    kinds = [kind for kind, _ in batch]
    assert all(fast.accepted[i] for i, kind in enumerate(kinds) if kind == "good")
    assert not any(fast.accepted[i] for i, _ in expected_letters)
    reasons = {letter[0] for _, letter in expected_letters}
    assert {
        v.NOT_AVRO,
        v.BAD_MAGIC_BYTE,
        v.UNKNOWN_SCHEMA_ID,
        v.TRUNCATED,
        v.RECORD_TOO_LARGE,
        v.MISSING_EVENT_TIME,
        v.FUTURE_EVENT_TIME,
        v.NOT_NULL,
        v.OUT_OF_RANGE,
        v.NOT_ALLOWED_VALUE,
        v.WRONG_TYPE,
    } <= reasons
    # Every row either path kept fits the landed Arrow schema (a failure here would block a partition).
    assert rows_to_table([row for row, _ in expected if row is not None], pipeline.stream).num_rows == len(
        expected_rows
    )


def test_the_table_has_the_landed_types_and_values(pipeline: PipelineConfig) -> None:
    schema = pipeline.stream.avro_schema()
    records = [good_record(random.Random(i)) for i in range(50)]
    fast = decode_batch([framed(schema, r) for r in records], pipeline, lambda sid: sid == READER_ID, NOW)
    assert fast.accepted.all()
    assert fast.table.equals(rows_to_table(records, pipeline.stream))


def test_records_of_other_writer_schemas_and_unreachable_registries_are_left_to_the_per_record_path(
    pipeline: PipelineConfig,
) -> None:
    schema = pipeline.stream.avro_schema()
    values = [framed(schema, good_record(random.Random(i))) for i in range(5)]

    def registry_down(_schema_id: int) -> bool:
        raise ConnectionError("registry unreachable")

    assert not decode_batch(values, pipeline, registry_down, NOW).accepted.any()
    assert not decode_batch(values, pipeline, lambda sid: sid == EVOLVED_ID, NOW).accepted.any()
    empty = decode_batch([], pipeline, lambda sid: True, NOW)
    assert empty.table.num_rows == 0 and empty.table.schema == rows_to_table([], pipeline.stream).schema
    assert isinstance(empty.table, pa.Table)
