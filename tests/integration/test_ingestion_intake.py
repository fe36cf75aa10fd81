"""Ingestion intake on the real broker and registry: Avro records from the stock serializer plus malformed
bytes; every record is either landed or dead-lettered, with its reason, and a replay lands nothing twice.
The HTTP intake: 404/422/413, per-record rejections, one Parquet object per request."""

from __future__ import annotations

import io
import json
import struct
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from ingestion_support import Ingestion, start_intake
from pipeline_support import collect_events, wait_for
from prometheus_client import REGISTRY

from driftloop.clients.db.models import DeadLetter, LandedBatch
from driftloop.clients.objectstore import open_object_store
from driftloop.contracts.events import Event
from driftloop.contracts.layout import landed_http_key
from driftloop.contracts.settings import Settings
from driftloop.contracts.topics import RECORD_REJECTED
from driftloop.runtime.service import Runtime
from driftloop.services.ingestion.kafka_intake import GROUP, KafkaIntake

pytestmark = pytest.mark.integration


def rejected_events(settings: Settings, runtime: Runtime, stream: str, expected: int) -> list[Event]:
    # Anything beyond the expected count would be a duplicate: look a little longer.
    return collect_events(
        runtime.bus,
        RECORD_REJECTED.name,
        lambda event: event.payload.stream == stream,
        expected,
        group=f"check-{stream}",
        linger=1.5,
    )


def test_kafka_records_are_landed_or_dead_lettered_exactly_once(ingestion: Ingestion) -> None:
    settings, runtime, stream = ingestion.settings, ingestion.runtime, ingestion.stream
    cfg = runtime.pipelines[f"model-{stream}"]
    registry = SchemaRegistryClient({"url": settings.schema_registry.url})
    serializer = AvroSerializer(registry, json.dumps(cfg.stream.avro_schema()))
    ctx = SerializationContext(ingestion.topic, MessageField.VALUE)
    now = datetime.now(tz=UTC).replace(microsecond=0)

    def record(i: int, **changes: Any) -> dict[str, Any]:
        row = {
            "customer_id": f"c{i % 9}",
            "event_time": now - timedelta(minutes=i),
            "amount": float(i),
            "age": 20 + i % 50,
            "category": "food" if i % 2 else "travel",
            "is_fraud": i % 2,
        }
        row.update(changes)
        return row

    good = [serializer(record(i), ctx) for i in range(130)]
    valid_wire = serializer(record(999), ctx)
    schema_id = struct.unpack(">I", valid_wire[1:5])[0]
    bad: dict[str, list[bytes]] = {
        "bad_magic_byte": [b"\x01" + valid_wire[1:], b"hello, not avro at all"],
        "unknown_schema_id": [b"\x00" + struct.pack(">I", 987_654_321) + valid_wire[5:]],
        "truncated": [valid_wire[: len(valid_wire) // 2], b"\x00\x00"],
        "not_avro": [valid_wire + b"\x00\x01\x02"],
        "out_of_range": [serializer(record(1, amount=-5.0), ctx), serializer(record(2, amount=20000.0), ctx)],
        "not_allowed_value": [serializer(record(3, category="toys"), ctx)],
        "future_event_time": [serializer(record(4, event_time=now + timedelta(days=2)), ctx)],
        "record_too_large": [serializer(record(5, category="x" * 500), ctx)],
    }
    producer = Producer(settings.kafka_config())
    messages = good[:60] + [b for values in bad.values() for b in values] + good[60:]
    for i, value in enumerate(messages):
        producer.produce(ingestion.topic, key=f"k{i % 7}".encode(), value=value)
    assert producer.flush(30) == 0
    total, n_bad = len(messages), sum(len(v) for v in bad.values())

    thread, stop = start_intake(ingestion.intake)

    def stats() -> dict[str, Any]:
        response = ingestion.client.get(f"/v1/streams/{stream}/stats")
        assert response.status_code == 200, response.text
        return response.json()

    wait_for(lambda: stats()["landed"] + stats()["dead_lettered"] == total, "every record to be accounted for")

    def offsets_and_lag() -> tuple[float, float]:
        """driftloop_consumer_committed_offset and driftloop_consumer_lag of the intake, summed over partitions."""
        sums = {"driftloop_consumer_committed_offset": 0.0, "driftloop_consumer_lag": 0.0}
        for metric in REGISTRY.collect():
            for sample in metric.samples:
                labels = sample.labels
                if sample.name in sums and labels.get("group") == GROUP and labels.get("topic") == ingestion.topic:
                    sums[sample.name] += sample.value
        return sums["driftloop_consumer_committed_offset"], sums["driftloop_consumer_lag"]

    # /metrics while the consumer runs: every offset committed, no lag (against the watermark seen in fetches).
    wait_for(lambda: offsets_and_lag() == (total, 0), "the intake's committed offsets and lag on /metrics")
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()

    final = stats()
    assert final["landed"] == len(good) == 130
    assert final["dead_lettered"] == n_bad
    assert final["records_in"] == total and final["pending"] == 0
    assert final["by_reason"] == {reason: len(values) for reason, values in bad.items()}

    # Dead letters: reason, a field where one is to blame, a kafka source; the same on the event topic.
    response = ingestion.client.get(f"/v1/streams/{stream}/dead-letters", params={"limit": 100})
    letters = response.json()["dead_letters"]
    assert len(letters) == n_bad
    assert all(dl["source"].startswith(f"kafka:{ingestion.topic}/") for dl in letters)
    by_reason = {dl["reason"]: dl for dl in letters}
    assert by_reason["out_of_range"]["field"] == "amount"
    assert by_reason["not_allowed_value"]["field"] == "category"
    assert by_reason["future_event_time"]["field"] == "event_time"
    events = rejected_events(settings, runtime, stream, n_bad)
    assert Counter(e.payload.reason for e in events) == Counter(final["by_reason"])
    by_source = {e.payload.source: e for e in events}
    assert len(by_source) == n_bad
    not_avro = next(e for e in events if e.payload.reason == "not_avro")
    assert not_avro.payload.original == valid_wire + b"\x00\x01\x02"
    assert not_avro.payload.schema_id is None or not_avro.payload.schema_id == schema_id
    range_events = [e for e in events if e.payload.reason == "out_of_range"]
    assert all(e.payload.schema_id == schema_id for e in range_events)

    # Landed Parquet: the stream's fields with their types; every good record exactly once.
    store = open_object_store(settings)
    with runtime.Session() as session:
        batches = session.scalars(sa.select(LandedBatch).where(LandedBatch.stream == stream)).all()
    tables = [pq.read_table(io.BytesIO(store.get_bytes(b.object_key))) for b in batches]
    landed = pa.concat_tables(tables)
    assert landed.schema.field("event_time").type == pa.timestamp("ms", tz="UTC")
    assert landed.schema.field("age").type == pa.int32()
    assert landed.schema.field("amount").type == pa.float64()
    assert sorted(landed.column("amount").to_pylist()) == [float(i) for i in range(130)]
    assert all(b.first_offset is not None and b.last_offset >= b.first_offset for b in batches)

    # Offsets were committed after landing: the group's committed positions cover every message.
    checker = Consumer(runtime.bus.consumer_config(GROUP))
    partitions = [TopicPartition(ingestion.topic, p) for p in range(settings.kafka.partitions)]
    committed = checker.committed(partitions, timeout=10)
    checker.close()
    assert sum(max(tp.offset, 0) for tp in committed) == total

    # A replay from offset 0 (as after a crash before the commit) lands nothing twice.
    rewind = Consumer(runtime.bus.consumer_config(GROUP))
    rewind.commit(
        offsets=[TopicPartition(ingestion.topic, p, 0) for p in range(settings.kafka.partitions)], asynchronous=False
    )
    rewind.close()
    replay = KafkaIntake(runtime.bus, runtime.pipelines, ingestion.intake.lander)
    thread, stop = start_intake(replay)
    wait_for(
        lambda: replay.counters[stream].received == total,  # received counts the skipped replays too
        "the replay to read every message",
    )
    stop.set()
    thread.join(timeout=30)
    after = stats()
    assert (after["landed"], after["dead_lettered"]) == (130, n_bad)
    assert replay.counters[stream].landed == 0
    with runtime.Session() as session:
        assert session.scalar(sa.select(sa.func.count()).where(DeadLetter.stream == stream)) == n_bad


def test_http_intake(ingestion: Ingestion) -> None:
    client, stream = ingestion.client, ingestion.stream
    url = f"/v1/streams/{stream}/records"

    unknown = client.post("/v1/streams/nope/records", json={"records": []})
    assert unknown.status_code == 404
    assert stream in unknown.json()["detail"]

    for body in (b"{not json", b'{"rows": []}', b'{"records": {"a": 1}}', b"[1, 2]"):
        response = client.post(url, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, body
        assert response.json()["detail"]

    too_many = client.post(url, json={"records": [{}] * 10_001})
    assert too_many.status_code == 413
    assert "10000" in too_many.json()["detail"]

    now = datetime.now(tz=UTC)
    millis = int((now - timedelta(minutes=5)).timestamp() * 1000)
    records: list[Any] = [
        {"customer_id": "a", "event_time": (now - timedelta(minutes=1)).isoformat(), "amount": 10, "age": 30},
        {"customer_id": "b", "event_time": millis, "amount": 2.5, "category": "food", "is_fraud": 1},
        {"customer_id": "c", "event_time": now.isoformat(), "amount": "ten"},  # wrong type
        {"customer_id": None, "event_time": now.isoformat(), "amount": 1.0},  # null not allowed
        {"customer_id": "e", "amount": 1.0},  # no event time
        {"customer_id": "f", "event_time": now.isoformat(), "amount": -1.0},  # out of range
        "not an object",
        {"customer_id": "h", "event_time": now.isoformat(), "amount": 1.0, "colour": "red"},  # unknown field
    ]
    response = client.post(url, json={"records": records})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 2
    assert [(r["index"], r["reason"], r["field"]) for r in body["rejected"]] == [
        (2, "wrong_type", "amount"),
        (3, "null_not_allowed", "customer_id"),
        (4, "missing_event_time", "event_time"),
        (5, "out_of_range", "amount"),
        (6, "not_an_object", None),
        (7, "unknown_field", "colour"),
    ]
    assert all(r["message"] for r in body["rejected"])

    request_id = body["request_id"]
    store = open_object_store(ingestion.settings)
    table = pq.read_table(io.BytesIO(store.get_bytes(landed_http_key(stream, request_id))))
    assert table.num_rows == 2
    assert table.schema.field("event_time").type == pa.timestamp("ms", tz="UTC")
    assert table.column("event_time").to_pylist()[1] == datetime.fromtimestamp(millis / 1000, tz=UTC)
    assert table.column("amount").to_pylist() == [10.0, 2.5]

    stats = client.get(f"/v1/streams/{stream}/stats").json()
    assert (stats["records_in"], stats["landed"], stats["dead_lettered"]) == (8, 2, 6)
    letters = client.get(f"/v1/streams/{stream}/dead-letters").json()["dead_letters"]
    assert {dl["source"] for dl in letters} == {f"http:{request_id}/{i}" for i in range(2, 8)}
    events = rejected_events(ingestion.settings, ingestion.runtime, stream, 6)
    assert len(events) == 6
    original = next(e for e in events if e.payload.source == f"http:{request_id}/6").payload.original
    assert json.loads(original) == "not an object"

    streams = client.get("/v1/streams").json()["streams"]
    assert [(s["stream"], s["topic"]) for s in streams] == [(stream, ingestion.topic)]
    assert client.get("/v1/streams/nope/stats").status_code == 404
    assert client.get(f"/v1/streams/{stream}/dead-letters", params={"limit": 0}).status_code == 422
    assert client.get("/v1/datasets/nope@v1").status_code == 404


def avro_varint(value: int) -> bytes:
    """A zigzag varint of any width (as a malformed or hostile producer may write it)."""
    unsigned = (value << 1) if value >= 0 else ((-value) << 1) - 1
    out = bytearray()
    while unsigned >= 0x80:
        out.append((unsigned & 0x7F) | 0x80)
        unsigned >>= 7
    out.append(unsigned)
    return bytes(out)


def widened(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: widened(value) for key, value in node.items() if key != "logicalType"}
    if isinstance(node, list):
        return [widened(item) for item in node]
    return "long" if node == "int" else node


def test_poison_records_are_dead_lettered_and_never_block_their_partition(ingestion: Ingestion) -> None:
    """Values the Avro decoder accepts or chokes on but Parquet cannot hold (an int beyond 32 bits, an event time
    past year 9999, invalid UTF-8, absurd string lengths), produced as raw bytes by the stock producer ahead of
    good records on ONE partition: each is a dead letter with its reason and field, the records after them land."""
    settings, runtime, stream = ingestion.settings, ingestion.runtime, ingestion.stream
    cfg = runtime.pipelines[f"model-{stream}"]
    schema = cfg.stream.avro_schema()
    schema_id = SchemaRegistryClient({"url": settings.schema_registry.url}).register_schema(
        f"{ingestion.topic}-value", Schema(json.dumps(schema), "AVRO")
    )
    # The same encoding, minus the checks fastavro's writer makes of union branches: ints as longs, timestamps as
    # plain longs. Any integer goes in, as a foreign producer may write it.
    wide = fastavro.parse_schema(widened(schema))
    now_ms = int(datetime.now(tz=UTC).timestamp()) * 1000

    def wire(i: int, **changes: Any) -> bytes:
        row = {"customer_id": f"c{i}", "event_time": now_ms - 1000 * i, "amount": float(i), "age": 30}
        row.update(changes)
        out = io.BytesIO()
        out.write(struct.pack(">bI", 0, schema_id))
        fastavro.schemaless_writer(out, wide, row)
        return out.getvalue()

    header = struct.pack(">bI", 0, schema_id)
    year_10000 = 253_402_300_800_000  # epoch millis of 10000-01-01
    # (reason, field, message value): customer_id is the first field, so its length varint follows the header.
    poison: list[tuple[str, str | None, bytes]] = [
        ("out_of_range", "age", wire(1, age=2**31)),
        ("out_of_range", "age", wire(2, age=-(2**31) - 1)),
        ("out_of_range", "is_fraud", wire(3, is_fraud=2**40)),
        ("out_of_range", "event_time", wire(4, event_time=year_10000)),
        ("out_of_range", "event_time", wire(5, event_time=2**62)),
        ("out_of_range", "event_time", wire(6, event_time=-62_135_596_800_001)),  # before year 1
        ("wrong_type", "customer_id", wire(7, customer_id="abc").replace(b"abc", b"a\xffc")),
        ("not_avro", "customer_id", header + avro_varint(-3) + wire(8)[6:]),  # negative string length
        ("truncated", "customer_id", header + avro_varint(2**40) + wire(9)[6:]),  # length far past the record's end
        # 2**66 millis: fastavro alone would keep the low 64 bits and land it as 1970-01-01.
        (
            "out_of_range",
            "event_time",
            wire(10, event_time=123456789).replace(avro_varint(123456789), avro_varint(2**66)),
        ),
        (
            "not_avro",
            "age",
            wire(11, age=60).replace(b"\x02" + avro_varint(60), b"\x01" + avro_varint(60)),
        ),  # branch -1
    ]
    good = [wire(100 + i) for i in range(40)]
    producer = Producer(settings.kafka_config())
    for value in [value for _, _, value in poison] + good:
        producer.produce(ingestion.topic, key=b"one-partition", value=value)
    assert producer.flush(30) == 0
    total = len(poison) + len(good)

    thread, stop = start_intake(ingestion.intake)

    def stats() -> dict[str, Any]:
        response = ingestion.client.get(f"/v1/streams/{stream}/stats")
        assert response.status_code == 200, response.text
        return response.json()

    wait_for(lambda: stats()["landed"] + stats()["dead_lettered"] == total, "every record to be accounted for")
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert ingestion.intake.last_error is None  # never retried: no partition was blocked

    final = stats()
    assert (final["records_in"], final["landed"], final["dead_lettered"], final["pending"]) == (total, 40, 11, 0)
    events = rejected_events(settings, runtime, stream, len(poison))
    by_value = {e.payload.original: e.payload for e in events}
    for reason, field, value in poison:
        assert (by_value[value].reason, by_value[value].field) == (reason, field), value
    for value in (poison[3][2], poison[4][2]):
        assert "out of range" in by_value[value].message
    letters = ingestion.client.get(f"/v1/streams/{stream}/dead-letters", params={"limit": 100}).json()
    assert Counter((dl["reason"], dl["field"]) for dl in letters["dead_letters"]) == Counter(
        (reason, field) for reason, field, _ in poison
    )
    # Replaying them decodes the originals the same way: each stays open with its reason, none is a 500.
    replay = ingestion.client.post(f"/v1/streams/{stream}/dead-letters/replay", json={})
    assert replay.status_code == 200, replay.text
    assert replay.json()["replayed"] == 0
    assert Counter(f["reason"] for f in replay.json()["still_failing"]) == Counter(r for r, _, _ in poison)

    store = open_object_store(settings)
    with runtime.Session() as session:
        batches = session.scalars(sa.select(LandedBatch).where(LandedBatch.stream == stream)).all()
    landed = pa.concat_tables([pq.read_table(io.BytesIO(store.get_bytes(b.object_key))) for b in batches])
    assert sorted(landed.column("customer_id").to_pylist()) == sorted(f"c{100 + i}" for i in range(40))


def test_http_intake_refuses_what_parquet_cannot_hold(ingestion: Ingestion) -> None:
    client, stream = ingestion.client, ingestion.stream
    now = datetime.now(tz=UTC)
    base = {"customer_id": "a", "event_time": (now - timedelta(minutes=1)).isoformat(), "amount": 1.0}
    records: list[Any] = [
        {**base, "age": 2**31},  # beyond an Avro int
        {**base, "is_fraud": -(2**31) - 1},
        {**base, "event_time": "10000-01-01T00:00:00Z"},
        {**base, "event_time": "9999-12-31T23:00:00-05:00"},  # past year 9999 once in UTC
        {**base, "event_time": 253_402_300_800_000},  # epoch millis of year 10000
        {**base, "customer_id": "a\ud800"},  # a lone surrogate: not UTF-8
        base,
    ]
    # json.dumps escapes the lone surrogate (as a JSON client sends it): httpx would refuse to encode it.
    content = json.dumps({"records": records})
    response = client.post(
        f"/v1/streams/{stream}/records", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 1
    assert [(r["index"], r["reason"], r["field"]) for r in body["rejected"]] == [
        (0, "wrong_type", "age"),
        (1, "wrong_type", "is_fraud"),
        (2, "wrong_type", "event_time"),
        (3, "wrong_type", "event_time"),
        (4, "wrong_type", "event_time"),
        (5, "wrong_type", "customer_id"),
    ]
    assert "out of range" in body["rejected"][3]["message"]
    stats = client.get(f"/v1/streams/{stream}/stats").json()
    assert (stats["records_in"], stats["landed"], stats["dead_lettered"]) == (7, 1, 6)

    # Bodies Python's JSON parser refuses with other errors than JSONDecodeError: a 422, not a 500.
    for body in ('{"records": [{"age": 1' + "0" * 5000 + "}]}", "[" * 100_000 + "]" * 100_000):
        response = client.post(
            f"/v1/streams/{stream}/records", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, response.text[:200]
        assert "not valid JSON" in response.json()["detail"]
