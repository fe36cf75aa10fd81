"""The producer contract, through a stack started as `driftloop up` starts it (the ingestion service as a process):
each stream's value schema is registered under its subject at `up` and served by ingestion and the CLI; the
README's producer runs as written (stock serializer, `use.latest.version`, nothing registered) and its record lands;
a writer schema that differs only in record name is accepted by the registry and resolved by ingestion; the wrong
writer schemas are `schema_mismatch` dead letters naming the field; a zone-less HTTP timestamp is refused."""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from pipeline_support import stream_pipeline, write_pipeline
from typer.testing import CliRunner

from driftloop.client import Client
from driftloop.clients.db import create_engine_for
from driftloop.clients.db.models import LandedBatch
from driftloop.contracts.settings import Settings, settings_env
from driftloop.ops.cli import app
from driftloop.ops.procs import free_port, wait_until
from driftloop.ops.stack import Stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Running:
    settings: Settings
    client: Client
    stream: str  # the test's own stream (the README writes to `transactions`)


@pytest.fixture(scope="module")
def running(broker: Any, schema_registry_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("producer-contract")
    unique = uuid.uuid4().hex[:8]
    stream = f"contract-{unique}"
    pipelines = tmp / "pipelines"
    pipelines.mkdir()
    shutil.copy(ROOT / "pipelines" / "transactions.yaml", pipelines / "transactions.yaml")
    batches = {"landing_batch_rows": 1, "landing_batch_seconds": 0.2}
    write_pipeline(pipelines, "contract", stream_pipeline(stream, optional_fields=(), dataset=batches))
    settings = Settings(
        home=tmp / "home",
        pipelines_dir=pipelines,
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "session_timeout_ms": 2000,
            "embedded": False,
            "ingestion_group": f"ingestion-{unique}",
        },
        schema_registry={"url": schema_registry_url, "embedded": False},
        services={"ingestion_port": free_port()},
    )
    stack = Stack(settings)
    try:
        stack.up(timeout=150, services=("ingestion",))
        with Client(settings) as client:
            yield Running(settings, client, stream)
    finally:
        stack.down()


def landed_rows(settings: Settings) -> list[dict[str, Any]]:
    engine = create_engine_for(settings.database_url)
    try:
        with engine.connect() as connection:
            keys = list(connection.scalars(sa.select(LandedBatch.object_key)))
    finally:
        engine.dispose()
    return [row for key in keys for row in pq.read_table(settings.object_store_path / key).to_pylist()]


def test_up_registers_each_stream_schema_and_serves_it(running: Running) -> None:
    registry = SchemaRegistryClient({"url": running.settings.schema_registry.url})
    for stream in ("transactions", running.stream):
        contract = running.client.stream_schema(stream)
        assert contract.subject == f"driftloop.stream.{stream}-value"
        latest = registry.get_latest_version(contract.subject)
        assert json.loads(latest.schema.schema_str) == contract.avro_schema
    shown = CliRunner().invoke(app, ["stream", "schema", running.stream], env=settings_env(running.settings))
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output) == running.client.stream_schema(running.stream).avro_schema


def test_the_readme_producer_runs_as_written_and_its_record_lands(running: Running) -> None:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- producer-example[^>]*-->\s*```python\n(.*?)```", readme, re.S)
    assert found, "the README's producer example (marked <!-- producer-example -->) is missing"
    env = {
        "PATH": "/usr/bin:/bin",
        "DRIFTLOOP_KAFKA__BOOTSTRAP_SERVERS": running.settings.kafka.bootstrap_servers,
        "DRIFTLOOP_SCHEMA_REGISTRY__URL": running.settings.schema_registry.url,
    }
    done = subprocess.run([sys.executable, "-c", found.group(1)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    def landed() -> bool:
        return any(r.get("customer_id") == "c42" for r in landed_rows(running.settings))

    wait_until(landed, 60, "the README producer's record to land")
    row = next(r for r in landed_rows(running.settings) if r.get("customer_id") == "c42")
    assert (row["amount"], row["merchant_category"], row["is_fraud"]) == (12.5, "grocery", 0)


def test_writer_schemas_resolved_or_dead_lettered_with_the_field(running: Running) -> None:
    settings, stream = running.settings, running.stream
    contract = running.client.stream_schema(stream)
    topic, ours = contract["topic"], contract["schema"]
    registry = SchemaRegistryClient({"url": settings.schema_registry.url})
    now = datetime.now(tz=UTC).replace(microsecond=0)
    good = {"customer_id": "renamed", "event_time": now - timedelta(minutes=1), "amount": 3.5, "is_fraud": 1}

    # Another record name and namespace: the registry takes it under the stream's subject (auto-registered by the
    # stock serializer), ingestion resolves it.
    theirs = {**ours, "name": "RainfallObservation", "namespace": "org.example"}
    producer = Producer(settings.kafka_config())
    serializer = AvroSerializer(registry, json.dumps(theirs))
    producer.produce(topic, value=serializer(good, SerializationContext(topic, MessageField.VALUE)))

    def field(name: str, **entry: Any) -> list[dict[str, Any]]:
        return [({**f, **entry} if f["name"] == name else f) for f in ours["fields"]]

    wrong: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
        ("amount", {**ours, "fields": field("amount", type="string")}, {**good, "amount": "3.5"}, "has string"),
        ("amount", {**ours, "fields": field("amount", type=["null", "double"])}, {**good, "amount": None}, "is null"),
        (
            "event_time",
            {**ours, "fields": [f for f in ours["fields"] if f["name"] != "event_time"]},
            {k: v for k, v in good.items() if k != "event_time"},
            "has no field 'event_time'",
        ),
    ]
    for i, (_, schema, record, _) in enumerate(wrong):
        # Registered elsewhere (the stream's subject refuses them): a producer with a stale or foreign schema id.
        schema_id = registry.register_schema(f"{stream}-foreign-{i}-value", Schema(json.dumps(schema), "AVRO"))
        body = io.BytesIO()
        body.write(struct.pack(">bI", 0, schema_id))
        fastavro.schemaless_writer(body, fastavro.parse_schema(schema), record)
        producer.produce(topic, value=body.getvalue())
    assert producer.flush(30) == 0

    def accounted() -> bool:
        stats = running.client.stream_stats(stream)
        return stats["landed"] + stats["dead_lettered"] >= 4

    wait_until(accounted, 60, "the four records to be landed or dead-lettered")
    stats = running.client.stream_stats(stream)
    assert (stats["landed"], stats["by_reason"]) == (1, {"schema_mismatch": 3})
    letters = running.client.dead_letters(stream)["dead_letters"]
    for name, _, _, says in wrong:
        assert any(d["field"] == name and says in d["message"] for d in letters), (name, says, letters)

    # Over HTTP a timestamp without a time zone is refused, naming the field; with one it lands.
    naive = {
        "customer_id": "h",
        "event_time": (now - timedelta(minutes=1)).replace(tzinfo=None).isoformat(),
        "amount": 1.0,
    }
    answer = running.client.ingest(stream, [naive, {**naive, "event_time": naive["event_time"] + "Z"}])
    assert answer["accepted"] == 1
    (rejected,) = answer["rejected"]
    assert (rejected["reason"], rejected["field"]) == ("wrong_type", "event_time")
    assert "no time zone" in rejected["message"]


def test_pipeline_apply_prepares_the_bus_and_refuses_an_incompatible_stream_change(
    running: Running, tmp_path: Path
) -> None:
    from confluent_kafka.admin import AdminClient

    from driftloop.contracts.pipeline import load_pipelines
    from driftloop.errors import ConflictError
    from driftloop.ops.pipelines import apply_pipeline

    settings = running.settings
    stream = f"applied-{uuid.uuid4().hex[:8]}"
    draft = write_pipeline(tmp_path / "drafts", "applied", stream_pipeline(stream, optional_fields=()))
    shown = CliRunner().invoke(
        app, ["pipeline", "apply", str(tmp_path / "drafts" / "applied.yaml")], env=settings_env(settings)
    )
    assert shown.exit_code == 0, shown.output
    assert "created" in shown.output and f"schema under {draft.stream.subject}" in shown.output
    topics = AdminClient(settings.kafka_config()).list_topics(timeout=10).topics
    assert draft.stream.topic in topics
    latest = SchemaRegistryClient({"url": settings.schema_registry.url}).get_latest_version(draft.stream.subject)
    assert json.loads(latest.schema.schema_str) == draft.stream.avro_schema()

    # amount: double -> string would dead-letter every record producers write with the registered schema.
    changed = stream_pipeline(stream, optional_fields=())
    changed["stream"]["fields"] = [
        ({**f, "type": "string"} if f["name"] == "amount" else f) for f in changed["stream"]["fields"]
    ]
    write_pipeline(tmp_path / "drafts2", "applied", changed)
    with pytest.raises(ConflictError, match="not compatible"):
        apply_pipeline(settings, tmp_path / "drafts2" / "applied.yaml", bus=True)
    assert load_pipelines(settings.pipelines_dir)[f"model-{stream}"].stream.field("amount").type == "double"


def test_a_pipeline_applied_to_running_services_is_taken_without_a_restart(running: Running, tmp_path: Path) -> None:
    from driftloop.errors import NotFoundError

    settings, client = running.settings, running.client
    env = settings_env(settings)
    stream = f"live-{uuid.uuid4().hex[:8]}"
    batches = {"landing_batch_rows": 1, "landing_batch_seconds": 0.2}
    draft = write_pipeline(tmp_path, "live", stream_pipeline(stream, optional_fields=(), dataset=batches))
    now = datetime.now(tz=UTC).replace(microsecond=0) - timedelta(minutes=1)
    record = {"customer_id": "over-http", "event_time": now.isoformat(), "amount": 2.0, "is_fraud": 0}
    with pytest.raises(NotFoundError):
        client.ingest(stream, [record])

    applied = CliRunner().invoke(app, ["pipeline", "apply", str(tmp_path / "live.yaml")], env=env)
    assert applied.exit_code == 0, applied.output
    assert "Running services take it now" in applied.output

    # The ingestion process (started before the file existed) takes the new stream over HTTP...
    wait_until(lambda: stream in {s["stream"] for s in client.streams()["streams"]}, 60, "ingestion to know it")
    assert client.ingest(stream, [record])["accepted"] == 1
    # ... and its Kafka intake subscribes to the stream's topic.
    registry = SchemaRegistryClient({"url": settings.schema_registry.url})
    topic = draft.stream.topic
    serializer = AvroSerializer(registry, json.dumps(draft.stream.avro_schema()))
    producer = Producer(settings.kafka_config())
    from_kafka = {**record, "customer_id": "over-kafka", "event_time": now}
    producer.produce(topic, value=serializer(from_kafka, SerializationContext(topic, MessageField.VALUE)))
    assert producer.flush(30) == 0
    wait_until(
        lambda: any(r.get("customer_id") == "over-kafka" for r in landed_rows(settings)),
        60,
        "the record written to the new stream's topic to land",
    )

    removed = CliRunner().invoke(app, ["pipeline", "remove", draft.model.name], env=env)
    assert removed.exit_code == 0, removed.output
    wait_until(lambda: stream not in {s["stream"] for s in client.streams()["streams"]}, 60, "ingestion to drop it")
    with pytest.raises(NotFoundError):
        client.ingest(stream, [record])
