"""A Kafka record written with another writer schema than the stream's: a different record name alone is resolved
(aliases); a field of another type, a null where the stream allows none or a missing field is a ``schema_mismatch``
dead letter naming the field and what differs."""

from __future__ import annotations

import io
import json
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema

from driftloop.contracts.pipeline import PipelineConfig, parse_pipeline
from driftloop.runtime.serde import AvroCodec
from driftloop.services.ingestion import validation as v
from driftloop.services.ingestion.decoding import decode_record

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PIPELINE_YAML = """
stream:
  name: weather
  fields:
    - {name: station, type: string, nullable: false}
    - {name: observed_at, type: timestamp, nullable: false}
    - {name: rain_mm, type: double, nullable: false}
    - {name: humidity, type: double}
    - {name: label, type: int}
  entity_key: station
  event_time: observed_at
  label: label
features:
  - {name: rain_mm}
model: {name: weather-model}
"""


class Registry:
    def __init__(self) -> None:
        self.schemas: dict[int, dict[str, Any]] = {}

    def get_schema(self, schema_id: int) -> Schema:
        return Schema(json.dumps(self.schemas[schema_id]), "AVRO")


@pytest.fixture(scope="module")
def pipeline() -> PipelineConfig:
    return parse_pipeline(PIPELINE_YAML)


def encode(registry: Registry, schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    registry.schemas[schema_id] = schema
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def changed(schema: dict[str, Any], field: str, **entry: Any) -> dict[str, Any]:
    fields = [({**f, **entry} if f["name"] == field else f) for f in schema["fields"]]
    return {**schema, "fields": [f for f in fields if "drop" not in f]}


def good_record() -> dict[str, Any]:
    return {
        "station": "s1",
        "observed_at": NOW - timedelta(minutes=1),
        "rain_mm": 1.5,
        "humidity": 0.5,
        "label": 1,
    }


def decode(pipeline: PipelineConfig, registry: Registry, value: bytes) -> tuple[Any, Any]:
    reader = fastavro.parse_schema(pipeline.stream.avro_schema())
    return decode_record(AvroCodec(registry), value, reader, pipeline, NOW)  # type: ignore[arg-type]


def test_another_record_name_and_namespace_is_resolved_by_alias(pipeline: PipelineConfig) -> None:
    registry = Registry()
    theirs = {**pipeline.stream.avro_schema(), "name": "RainfallObservation", "namespace": "org.example"}
    row, rejection = decode(pipeline, registry, encode(registry, 3, theirs, good_record()))
    assert rejection is None
    assert row is not None and (row["station"], row["rain_mm"]) == ("s1", 1.5)


@pytest.mark.parametrize(
    ("field", "entry", "record", "says"),
    [
        ("rain_mm", {"type": "string"}, {"rain_mm": "1.5"}, "has string, the stream expects double"),
        ("rain_mm", {"type": ["null", "double"]}, {"rain_mm": None}, "is null"),
        ("observed_at", {"drop": True}, {}, "has no field 'observed_at'"),
        ("observed_at", {"type": "string"}, {"observed_at": "2026-11-23T11:59:00Z"}, "long (timestamp-millis)"),
    ],
)
def test_a_writer_schema_mismatch_names_the_field_and_what_differs(
    pipeline: PipelineConfig, field: str, entry: dict[str, Any], record: dict[str, Any], says: str
) -> None:
    registry = Registry()
    theirs = changed(pipeline.stream.avro_schema(), field, **entry)
    values = {k: val for k, val in {**good_record(), **record}.items() if k in {f["name"] for f in theirs["fields"]}}
    row, rejection = decode(pipeline, registry, encode(registry, 4, theirs, values))
    assert row is None and rejection is not None
    assert (rejection.reason, rejection.field, rejection.schema_id) == (v.SCHEMA_MISMATCH, field, 4)
    assert says in rejection.message, rejection.message


def test_a_nullable_writer_field_lands_when_the_value_is_there(pipeline: PipelineConfig) -> None:
    registry = Registry()
    theirs = changed(pipeline.stream.avro_schema(), "rain_mm", type=["null", "double"])
    row, rejection = decode(pipeline, registry, encode(registry, 5, theirs, good_record()))
    assert rejection is None and row is not None and row["rain_mm"] == 1.5


def test_http_timestamps_need_a_time_zone() -> None:
    with pytest.raises(v.ValidationFailed) as caught:
        v.parse_event_time("2026-11-23T11:00:00", "observed_at")
    assert caught.value.reason == v.WRONG_TYPE and "no time zone" in str(caught.value)


def test_a_field_name_that_is_not_an_avro_name_is_refused_with_the_rule() -> None:
    from driftloop.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_pipeline(PIPELINE_YAML.replace("name: humidity", "name: dew point"))
    assert "not an Avro name" in str(caught.value) and "'dew_point'" in str(caught.value)
