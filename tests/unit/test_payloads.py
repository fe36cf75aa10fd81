"""Typed event payloads: generated from the Avro schemas, one class per event type, and every one survives the trip
through the Confluent wire format with its real schema."""

from __future__ import annotations

import io
import json
import typing
from dataclasses import MISSING, FrozenInstanceError, fields, is_dataclass
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema

from driftloop.contracts import codegen, payloads
from driftloop.contracts.events import Envelope, Event, new_event, new_events, payload_type
from driftloop.contracts.payloads import PAYLOAD_TYPES, DriftDetected, FeatureTest, ModelPromoted, PredictionTest
from driftloop.contracts.schemas import ENVELOPE, event_schema, event_types
from driftloop.contracts.topics import EVENT_TOPICS, TOPIC_BY_EVENT_TYPE
from driftloop.errors import SchemaError
from driftloop.runtime import serde
from driftloop.runtime.bus import EventLog
from driftloop.runtime.serde import AvroCodec

WHEN = datetime(2026, 11, 24, 12, 30, 15, 123000, tzinfo=UTC)


class InMemoryRegistry:
    """The two calls AvroCodec makes, on a dict: enough for the wire format without a registry service."""

    def __init__(self) -> None:
        self.schemas: list[str] = []

    def register_schema(self, _subject: str, schema: Schema) -> int:
        if schema.schema_str not in self.schemas:
            self.schemas.append(schema.schema_str)
        return self.schemas.index(schema.schema_str) + 1

    def get_schema(self, schema_id: int) -> Schema:
        return Schema(self.schemas[schema_id - 1], "AVRO")


def sample(avro: Any, seed: int) -> Any:
    """A value of an Avro type, in the Python shape of the payload classes: distinct per field (``seed``), every
    optional field set (so that the non-null branch goes through the schema too)."""
    if isinstance(avro, list):
        branches = [b for b in avro if b != "null"]
        if len(branches) == 1:
            return sample(branches[0], seed)
        return sample(branches[seed % len(branches)], seed)
    if isinstance(avro, dict):
        if avro.get("logicalType") == "timestamp-millis":
            return WHEN.replace(second=seed % 60)
        if avro["type"] == "record":
            record = getattr(payloads, avro["name"])
            return record(**{f["name"]: sample(f["type"], seed + i) for i, f in enumerate(avro["fields"])})
        if avro["type"] == "array":
            return [sample(avro["items"], seed), sample(avro["items"], seed + 1)]
        if avro["type"] == "map":
            # Every branch of a union of values once (PredictionLogged's inputs: null, bool, long, double, string).
            values = avro["values"] if isinstance(avro["values"], list) else [avro["values"]]
            return {f"key{i}": sample(value, seed + i) if value != "null" else None for i, value in enumerate(values)}
        return sample(avro["type"], seed)
    return {
        "string": f"text-{seed}",
        "int": 1000 + seed,
        "long": 10_000_000_000 + seed,
        "double": seed + 0.25,
        "float": seed + 0.5,
        "boolean": seed % 2 == 0,
        "bytes": bytes([seed % 256, 0, 255]),
    }[avro]


def sample_payload(event_type: str) -> payloads.Payload:
    schema = event_schema(event_type)
    own = [f for f in schema["fields"] if f["name"] != "envelope"]
    return PAYLOAD_TYPES[event_type](**{f["name"]: sample(f["type"], i) for i, f in enumerate(own)})


def test_the_checked_in_payloads_are_generated_from_the_schemas() -> None:
    """After a schema change: ``python -m driftloop.contracts.codegen`` (``driftloop schemas check`` says so too)."""
    assert codegen.PAYLOADS_PATH.read_text() == codegen.render()
    assert codegen.main(["--check"]) == 0


def test_one_payload_class_per_event_type_with_its_topic() -> None:
    assert sorted(PAYLOAD_TYPES) == event_types()
    for topic in EVENT_TOPICS:
        cls = PAYLOAD_TYPES[topic.event_type]
        assert cls.event_type == topic.event_type == cls.__name__
        assert cls.topic is TOPIC_BY_EVENT_TYPE[topic.event_type]
        assert payload_type(topic.event_type) is cls
    with pytest.raises(ValueError, match="unknown event type 'NoSuchEvent'"):
        payload_type("NoSuchEvent")


PYTHON_TYPES = {
    "string": str,
    "int": int,
    "long": int,
    "double": float,
    "float": float,
    "boolean": bool,
    "bytes": bytes,
}


def expected_annotation(avro: Any) -> Any:
    if isinstance(avro, list):
        union = [expected_annotation(b) for b in avro]
        result = union[0]
        for branch in union[1:]:
            result = result | branch
        return result
    if avro == "null":
        return type(None)
    if isinstance(avro, str):
        return PYTHON_TYPES[avro]
    if avro.get("logicalType") == "timestamp-millis":
        return datetime
    if avro["type"] == "record":
        return getattr(payloads, avro["name"])
    if avro["type"] == "array":
        return list[expected_annotation(avro["items"])]
    if avro["type"] == "map":
        return dict[str, expected_annotation(avro["values"])]
    return expected_annotation(avro["type"])


def check_record(cls: type, schema: dict[str, Any]) -> None:
    own = [f for f in schema["fields"] if f["type"] != ENVELOPE and f["name"] != "envelope"]
    assert is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert "__slots__" in cls.__dict__, f"{cls.__name__} has no slots"
    assert [f.name for f in fields(cls)] == [f["name"] for f in own], f"{cls.__name__}: fields or their order"
    hints = typing.get_type_hints(cls, vars(payloads))
    for spec, field in zip(own, fields(cls), strict=True):
        assert hints[field.name] == expected_annotation(spec["type"]), f"{cls.__name__}.{field.name}"
        if "default" in spec:
            assert field.default == spec["default"], f"{cls.__name__}.{field.name}: Avro default"
        else:
            assert field.default is MISSING, f"{cls.__name__}.{field.name} is required"
        if isinstance(spec["type"], dict) and spec["type"].get("type") == "record":
            check_record(hints[field.name], spec["type"])
        if isinstance(spec["type"], list):
            for branch in spec["type"]:
                if isinstance(branch, dict) and branch.get("type") == "record":
                    check_record(getattr(payloads, branch["name"]), branch)
        if isinstance(spec["type"], dict) and spec["type"].get("type") == "array":
            items = spec["type"]["items"]
            if isinstance(items, dict) and items.get("type") == "record":
                check_record(getattr(payloads, items["name"]), items)


@pytest.mark.parametrize("event_type", event_types())
def test_each_class_has_exactly_its_schema_fields(event_type: str) -> None:
    check_record(PAYLOAD_TYPES[event_type], event_schema(event_type))


@pytest.mark.parametrize("event_type", event_types())
def test_every_event_type_round_trips_through_the_wire_format(event_type: str) -> None:
    codec = AvroCodec(InMemoryRegistry())  # type: ignore[arg-type]
    payload = sample_payload(event_type)
    cause = new_event(payloads.ExternalTrigger(model="m", reason="r"), producer="test")
    event = new_event(payload, producer="test", cause=cause)
    wire = codec.encode(payload.topic.subject, event_schema(event_type), event.to_avro())
    _, record = codec.decode(wire)
    back = Event.from_avro(record, type(payload))
    assert back == event
    assert back.payload == payload and type(back.payload) is type(payload)
    assert back.key == str(getattr(payload, payload.topic.key))
    # Every optional field at its default (null) goes through as well.
    required = {f.name: getattr(payload, f.name) for f in fields(payload) if f.default is MISSING}
    minimal = new_event(type(payload)(**required), producer="test")
    _, record = codec.decode(codec.encode(payload.topic.subject, event_schema(event_type), minimal.to_avro()))
    assert Event.from_avro(record) == minimal


def test_payloads_are_frozen() -> None:
    promoted = sample_payload("ModelPromoted")
    with pytest.raises(FrozenInstanceError):
        promoted.version = 3  # type: ignore[misc]
    assert not hasattr(promoted, "__dict__")


def test_a_record_of_an_older_schema_version_reads_with_the_defaults() -> None:
    """A producer on a released version without ``moved_by``/``rollback`` (both added with defaults)."""
    record = sample_payload("ModelPromoted").to_avro()
    del record["moved_by"], record["rollback"]
    old = ModelPromoted.from_avro(record)
    assert (old.moved_by, old.rollback) == ("registry", False)


def test_an_event_of_another_type_is_refused_where_a_payload_class_is_expected() -> None:
    event = new_event(sample_payload("ExternalTrigger"), producer="test")
    with pytest.raises(ValueError, match="a ExternalTrigger event where ModelPromoted events belong"):
        Event.from_avro(event.to_avro(), ModelPromoted)


def test_a_cause_envelope_continues_its_cascade() -> None:
    root = Envelope("e-1", "DriftDetected", WHEN, None, "cascade-1", "monitor")
    child = new_event(sample_payload("TrainingRequested"), producer="triggers", cause=root)
    assert (child.envelope.caused_by, child.envelope.cascade_id) == ("e-1", "cascade-1")
    assert child.type == "TrainingRequested" and child.topic.name == "driftloop.training.requested"


def test_the_event_log_keeps_the_payload_json_the_timeline_reads() -> None:
    drift = DriftDetected(
        model="fraud",
        version=2,
        reference_dataset_version_id="tx@v1",
        window_size=200,
        window_index=4,
        alpha=0.01,
        correction="holm",
        drifted_features=["amount"],
        tests=[
            FeatureTest(feature="amount", test="ks", statistic=0.5, p_value=1e-6, adjusted_p_value=1e-5, drifted=True)
        ],
        prediction_test=PredictionTest(test="ks", statistic=0.1, p_value=0.5, psi=0.01, wasserstein=0.2, drifted=False),
    )
    row = EventLog.to_record(new_event(drift, producer="monitor"))
    assert (row["model"], row["stream"], row["event_type"]) == ("fraud", None, "DriftDetected")
    payload = json.loads(json.dumps(row["payload"]))  # what the json column stores
    assert payload["drifted_features"] == ["amount"]
    assert payload["tests"][0] == {
        "feature": "amount",
        "test": "ks",
        "statistic": 0.5,
        "p_value": 1e-6,
        "adjusted_p_value": 1e-5,
        "drifted": True,
    }
    assert payload["prediction_test"]["wasserstein"] == 0.2
    assert payload["prediction_drifted"] is False
    created = sample_payload("DatasetVersionCreated")
    row = EventLog.to_record(new_event(created, producer="ingestion"))
    assert (row["model"], row["stream"]) == (None, created.stream)  # type: ignore[attr-defined]
    assert row["payload"]["min_event_time"] == created.min_event_time.isoformat()  # type: ignore[attr-defined]


def test_a_prepared_writer_writes_the_bytes_fastavro_writes_unaided() -> None:
    """``RecordWriter`` names the union branch of each value of a map of scalars (a shortcut through fastavro's
    union matching): the bytes must be the ones fastavro writes by itself, for every branch and for a value it
    does not name (a subclass of int)."""

    class Count(int):
        pass

    codec = AvroCodec(InMemoryRegistry())  # type: ignore[arg-type]
    schema = event_schema("PredictionLogged")
    writer = codec.writer(payloads.PredictionLogged.topic.subject, schema)
    assert set(writer.map_unions) == {"inputs"}
    inputs = {"x": 0.5, "n": -(2**62), "flag": True, "name": "a", "none": None, "count": Count(3)}
    event = new_event(
        payloads.PredictionLogged(request_id="r", model="m", version=1, index=0, inputs=inputs, prediction=0.1),
        producer="test",
    )
    unaided = io.BytesIO()
    fastavro.schemaless_writer(unaided, fastavro.parse_schema(schema), event.to_avro())
    wire = writer.encode(event.to_avro())
    assert wire[5:] == unaided.getvalue()
    assert Event.from_avro(codec.decode(wire)[1]) == event


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A record's fields by path, its envelope flattened (``BatchWriter``'s paths)."""
    flat: dict[str, Any] = {}
    for name, value in record.items():
        if name == "envelope":
            flat.update(_flat(value, "envelope."))
        else:
            flat[prefix + name] = value
    return flat


def _columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)]


# Event types whose schemas hold what the batch writer does not compile (a union of null and a logical type, an
# array of records): they keep ``RecordWriter.encode``. A type that becomes compilable moves to the parity test.
NOT_BATCHED = {"DatasetVersionCreated", "DriftDetected", "PerformanceDegraded", "TrainingRequested"}
BATCH_VARYING = ["envelope.event_id", "envelope.cascade_id"]


@pytest.mark.parametrize("event_type", sorted(NOT_BATCHED))
def test_a_schema_the_batch_writer_cannot_compile_is_refused_when_the_writer_is_made(event_type: str) -> None:
    codec = AvroCodec(InMemoryRegistry())  # type: ignore[arg-type]
    writer = codec.writer(sample_payload(event_type).topic.subject, event_schema(event_type))
    with pytest.raises(ValueError, match=r"batch encoder|non-primitive"):
        writer.batch(BATCH_VARYING)


@pytest.mark.parametrize("event_type", [t for t in event_types() if t not in NOT_BATCHED])
def test_a_batch_writer_writes_the_bytes_the_record_writer_writes(event_type: str) -> None:
    """``BatchWriter`` (the fields a batch shares encoded once, the others per record) must write each record as
    ``RecordWriter`` does."""
    codec = AvroCodec(InMemoryRegistry())  # type: ignore[arg-type]
    payload = sample_payload(event_type)
    writer = codec.writer(payload.topic.subject, event_schema(event_type))
    batch = writer.batch(BATCH_VARYING)
    cause = new_event(payloads.ExternalTrigger(model="m", reason="r"), producer="test")
    caused = new_event(payload, producer="test", cause=cause)  # a caused event: caused_by, its cascade shared
    assert batch.encode(_flat(caused.to_avro()), _columns([(caused.id, caused.envelope.cascade_id)])) == [
        writer.encode(caused.to_avro())
    ]
    roots = new_events([payload] * 3, producer="test")  # made together: one timestamp
    values = batch.encode(_flat(roots[0].to_avro()), _columns([(e.id, e.envelope.cascade_id) for e in roots]))
    assert values == [writer.encode(e.to_avro()) for e in roots]
    assert [Event.from_avro(codec.decode(v)[1]) for v in values] == roots


def test_a_batch_of_prediction_rows_is_written_as_fastavro_writes_each() -> None:
    codec = AvroCodec(InMemoryRegistry())  # type: ignore[arg-type]
    schema = event_schema("PredictionLogged")
    writer = codec.writer(payloads.PredictionLogged.topic.subject, schema)
    varying = ["envelope.event_id", "envelope.cascade_id", "index", "inputs", "prediction", "entity"]
    batch = writer.batch(varying)
    inputs: list[dict[str, Any]] = [
        {"x": 0.5, "n": -(2**62), "flag": True, "off": False, "name": "é" * 70, "none": None},
        {},
        {"x": float("nan"), "big": 2**63 - 1, "k" * 200: 1},
    ] * 50
    events = [
        new_event(
            payloads.PredictionLogged(
                request_id="r", model="m", version=7, index=i, inputs=row, prediction=i / 3, entity=f"e{i}" * (i % 2)
            ),
            producer="serving",
        )
        for i, row in enumerate(inputs)
    ]
    events = new_events([e.payload for e in events], producer="serving")  # one timestamp: the shared fields
    shared = _flat(events[0].to_avro())
    values = batch.encode(shared, _columns([(e.id, e.id, e.payload.index, e.payload.inputs, e.payload.prediction,
                                    e.payload.entity) for e in events]))  # fmt: skip
    for event, value in zip(events, values, strict=True):
        unaided = io.BytesIO()
        fastavro.schemaless_writer(unaided, fastavro.parse_schema(schema), event.to_avro())
        assert value[5:] == unaided.getvalue()


def test_a_batch_value_that_does_not_fit_the_schema_is_a_schema_error() -> None:
    codec = AvroCodec(InMemoryRegistry())  # type: ignore[arg-type]
    writer = codec.writer(payloads.PredictionLogged.topic.subject, event_schema("PredictionLogged"))
    batch = writer.batch(["envelope.event_id", "envelope.cascade_id", "index", "inputs", "prediction", "entity"])
    event = new_event(
        payloads.PredictionLogged(request_id="r", model="m", version=1, index=0, inputs={}, prediction=0.1),
        producer="test",
    )
    shared = _flat(event.to_avro())
    with pytest.raises(SchemaError):
        batch.encode(shared, _columns([(event.id, event.id, 0, {"x": [1, 2]}, 0.1, None)]))  # a list in the inputs map
    with pytest.raises(SchemaError):
        batch.encode(shared, _columns([(event.id, event.id, 2**31, {}, 0.1, None)]))  # an index beyond Avro's int
    with pytest.raises(ValueError):
        writer.batch(["envelope.no_such_field"])
    with pytest.raises(ValueError):  # columns of different lengths
        batch.encode(shared, [[event.id], [event.id], [0, 1], [{}], [0.1], [None]])


@pytest.mark.parametrize("odd_row", [None, {"b": 1.0, "a": 2.0}, {"a": 1, "b": 2.0}, {"a": 1.0}, {}])
def test_maps_of_floats_written_in_one_go_are_the_bytes_fastavro_writes(odd_row: dict[str, Any] | None) -> None:
    """A column of float maps with the same keys is written by numpy at once; a column with one odd map (keys in
    another order, an int, fewer keys, empty) value by value: the bytes of each event are fastavro's either way."""
    codec = AvroCodec(InMemoryRegistry())  # type: ignore[arg-type]
    schema = event_schema("PredictionLogged")
    writer = codec.writer(payloads.PredictionLogged.topic.subject, schema)
    batch = writer.batch(["envelope.event_id", "envelope.cascade_id", "index", "inputs", "prediction", "entity"])
    inputs: list[dict[str, Any]] = [{"a": i / 3, "b": -i * 1e300, "é" * 3: float(i)} for i in range(40)]
    if odd_row is not None:
        inputs[17] = odd_row
    events = new_events(
        [payloads.PredictionLogged(request_id="r", model="m", version=1, index=i, inputs=row, prediction=0.5)
         for i, row in enumerate(inputs)],
        producer="serving",
    )  # fmt: skip
    values = batch.encode(
        _flat(events[0].to_avro()),
        [[e.id for e in events], [e.id for e in events], range(40), inputs, [0.5] * 40, [None] * 40],
    )
    assert (serde._double_maps(inputs, b"\x06") is None) == (odd_row is not None)  # the path taken
    parsed = fastavro.parse_schema(schema)
    for event, value in zip(events, values, strict=True):
        unaided = io.BytesIO()
        fastavro.schemaless_writer(unaided, parsed, event.to_avro())
        assert value[5:] == unaided.getvalue()
