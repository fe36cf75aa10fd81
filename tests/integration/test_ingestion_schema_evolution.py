"""Schema evolution with the stock confluent_kafka client: while ingestion runs, the producer moves to v2 (a field
added with a default) and v3 (a defaulted field removed); every record is read into the stream's current schema
and lands. Our registry refuses an incompatible registration with 409 and the reason, at BACKWARD, FORWARD,
FULL and the transitive levels, per subject and globally."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext
from pipeline_support import stream_pipeline, wait_for, write_pipeline

from driftloop.clients.db import migrate
from driftloop.clients.db.models import LandedBatch
from driftloop.clients.objectstore import open_object_store
from driftloop.contracts.settings import Settings
from driftloop.runtime.service import make_runtime
from driftloop.services.ingestion.handlers import stream_stats
from driftloop.services.ingestion.kafka_intake import KafkaIntake
from driftloop.services.ingestion.landing import Lander

pytestmark = pytest.mark.integration


@pytest.fixture
def running(make_settings: Callable[..., Settings], tmp_path: Path, unique: str) -> Iterator[tuple[Any, ...]]:
    stream = f"evo-{unique}"
    pipelines = tmp_path / "pipelines"
    batches = {"landing_batch_rows": 10, "landing_batch_seconds": 0.3}
    write_pipeline(pipelines, "evo", stream_pipeline(stream, optional_fields=("age",), dataset=batches))
    settings = make_settings(pipelines_dir=pipelines)
    migrate(settings.database_url)
    runtime = make_runtime("ingestion", settings)
    lander = Lander(runtime.bus, open_object_store(settings))
    intake = KafkaIntake(runtime.bus, runtime.pipelines, lander)
    stop = threading.Event()
    thread = threading.Thread(target=intake.run, args=(stop,), daemon=True)
    thread.start()
    wait_for(lambda: intake.assigned, "the ingestion consumer's assignment")
    try:
        yield settings, runtime, lander, stream
    finally:
        stop.set()
        thread.join(timeout=30)
        runtime.bus.close()


def test_producer_moves_to_compatible_versions_while_ingestion_runs(running: tuple[Any, ...]) -> None:
    settings, runtime, lander, stream = running
    cfg = runtime.pipelines[f"model-{stream}"]
    topic = cfg.stream.topic
    v1 = cfg.stream.avro_schema()
    v2 = {**v1, "fields": [*v1["fields"], {"name": "channel", "type": "string", "default": "web"}]}
    v3 = {**v2, "fields": [f for f in v2["fields"] if f["name"] != "age"]}  # age had a default (null)
    registry = SchemaRegistryClient({"url": settings.schema_registry.url})
    ctx = SerializationContext(topic, MessageField.VALUE)
    producer = Producer(settings.kafka_config())
    now = datetime.now(tz=UTC).replace(microsecond=0)
    for generation, schema in enumerate((v1, v2, v3)):
        serializer = AvroSerializer(registry, json.dumps(schema))
        for i in range(generation * 20, generation * 20 + 20):
            record: dict[str, Any] = {
                "customer_id": f"c{i}",
                "event_time": now - timedelta(minutes=i),
                "amount": float(i),
                "is_fraud": i % 2,
            }
            if generation < 2:
                record["age"] = 30 + i
            if generation > 0:
                record["channel"] = "app"
            producer.produce(topic, key=str(i).encode(), value=serializer(record, ctx))
        assert producer.flush(30) == 0
    versions = registry.get_versions(f"{topic}-value")
    assert len(versions) == 3, "the producer registered v2 and v3 under the topic's subject"

    wait_for(lambda: stream_stats(lander, stream)["landed"] >= 60, "all 60 records to land")
    stats = stream_stats(lander, stream)
    assert (stats["landed"], stats["dead_lettered"]) == (60, 0)
    with lander.Session() as session:
        keys = list(session.scalars(sa.select(LandedBatch.object_key).where(LandedBatch.stream == stream)))
    rows = [r for k in keys for r in pq.read_table(settings.object_store_path / k).to_pylist()]
    by_customer = {r["customer_id"]: r for r in rows}
    assert len(by_customer) == 60
    # Read into the stream's current schema: the added field is dropped, the removed one defaults to null.
    assert all("channel" not in r for r in rows)
    assert [by_customer[f"c{i}"]["age"] for i in (0, 25, 45)] == [30, 55, None]


V1 = {"type": "record", "name": "Evo", "fields": [{"name": "a", "type": "int"}, {"name": "b", "type": "string"}]}
V2 = {"type": "record", "name": "Evo", "fields": [{"name": "a", "type": "int"}]}  # b removed
V3 = {
    "type": "record",
    "name": "Evo",
    "fields": [{"name": "a", "type": "int"}, {"name": "b", "type": "int", "default": 0}],
}


def _register(url: str, subject: str, schema: dict[str, Any]) -> int:
    # A fresh client each time: the stock client caches a schema's id and would not ask the server again.
    return SchemaRegistryClient({"url": url}).register_schema(subject, Schema(json.dumps(schema), "AVRO"))


def test_transitive_levels_per_subject_and_global(schema_registry_url: str, unique: str) -> None:
    client = SchemaRegistryClient({"url": schema_registry_url})

    # BACKWARD compares with the newest version only: v3 can read v2 data (b defaults), so it passes ...
    loose = f"evo-loose-{unique}-value"
    client.set_compatibility(subject_name=loose, level="BACKWARD")
    for schema in (V1, V2, V3):
        _register(schema_registry_url, loose, schema)
    assert client.get_versions(loose) == [1, 2, 3]

    # ... BACKWARD_TRANSITIVE compares with every version: v3 cannot read v1's string b as an int.
    strict = f"evo-strict-{unique}-value"
    client.set_compatibility(subject_name=strict, level="BACKWARD_TRANSITIVE")
    assert client.get_compatibility(strict) == "BACKWARD_TRANSITIVE"
    _register(schema_registry_url, strict, V1)
    _register(schema_registry_url, strict, V2)
    with pytest.raises(SchemaRegistryError) as err:
        _register(schema_registry_url, strict, V3)
    assert err.value.http_status_code == 409
    assert "b" in err.value.error_message

    # FORWARD: old readers must read new data; adding a field without a default is fine, removing one is not.
    forward = f"evo-forward-{unique}-value"
    client.set_compatibility(subject_name=forward, level="FORWARD")
    _register(schema_registry_url, forward, V2)
    _register(schema_registry_url, forward, V1)  # adds b: the v2 reader ignores it
    with pytest.raises(SchemaRegistryError) as err:
        # Drops b, which the v1 reader needs (it has no default).
        _register(
            schema_registry_url, forward, {**V2, "fields": [*V2["fields"], {"name": "c", "type": "long", "default": 1}]}
        )
    assert err.value.http_status_code == 409

    # FULL: both directions; a field added with a default passes, one without a default does not.
    full = f"evo-full-{unique}-value"
    client.set_compatibility(subject_name=full, level="FULL")
    _register(schema_registry_url, full, V2)
    with pytest.raises(SchemaRegistryError) as err:
        _register(schema_registry_url, full, V1)
    assert err.value.http_status_code == 409
    _register(schema_registry_url, full, {**V2, "fields": [*V2["fields"], {"name": "c", "type": "long", "default": 1}]})

    # Global level: applies to subjects without their own level; a subject level overrides it.
    before = client.get_compatibility()
    try:
        client.set_compatibility(level="FULL_TRANSITIVE")
        assert client.get_compatibility() == "FULL_TRANSITIVE"
        fresh = f"evo-global-{unique}-value"
        _register(schema_registry_url, fresh, V2)
        with pytest.raises(SchemaRegistryError) as err:
            _register(schema_registry_url, fresh, V1)
        assert err.value.http_status_code == 409
        own = f"evo-own-{unique}-value"
        client.set_compatibility(subject_name=own, level="NONE")
        _register(schema_registry_url, own, V2)
        _register(schema_registry_url, own, V1)  # refused globally, allowed by the subject's own level
        assert client.get_versions(own) == [1, 2]
    finally:
        client.set_compatibility(level=before)
    assert client.get_compatibility() == before
