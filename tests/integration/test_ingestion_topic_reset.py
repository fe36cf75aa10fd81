"""A topic reset (deleted and created again, as when a broker without storage restarts) starts its offsets again at
0: the new records at old offsets land; none is taken for a replay of what landed before the reset; the books
balance (received = landed + dead letters + skipped replays), and a replay within one life is still skipped. And a
broker restarted empty under a running intake: its readiness goes down, comes back by itself, and what is sent
after lands."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastapi.testclient import TestClient
from ingestion_support import Ingestion, start_intake
from pipeline_support import service_runtime, stream_pipeline, wait_for, write_pipeline

from driftloop.contracts.settings import Settings
from driftloop.ops.broker import EmbeddedBroker
from driftloop.ops.procs import free_port
from driftloop.runtime.service import _add_health
from driftloop.services.ingestion.kafka_intake import GROUP, KafkaIntake
from driftloop.services.ingestion.service import build

pytestmark = pytest.mark.integration


def produce(service: Ingestion, first: int, count: int) -> None:
    settings, cfg = service.settings, service.runtime.pipelines[f"model-{service.stream}"]
    serializer = AvroSerializer(
        SchemaRegistryClient({"url": settings.schema_registry.url}), json.dumps(cfg.stream.avro_schema())
    )
    ctx = SerializationContext(service.topic, MessageField.VALUE)
    now = datetime.now(tz=UTC).replace(microsecond=0)
    producer = Producer(settings.kafka_config())
    for i in range(first, first + count):
        row: dict[str, Any] = {
            "customer_id": f"c{i}",
            "event_time": now - timedelta(minutes=1),
            "amount": float(i),
            "age": 30,
            "category": "food",
            "is_fraud": 0,
        }
        # One partition: both lives' batches then span the same offsets (the same keys, but for the topic id).
        producer.produce(service.topic, value=serializer(row, ctx), partition=0)
    assert producer.flush(30) == 0


def run_until(intake: KafkaIntake, service: Ingestion, landed: int) -> dict[str, Any]:
    thread, stop = start_intake(intake)

    def stats() -> dict[str, Any]:
        return service.client.get(f"/v1/streams/{service.stream}/stats").json()

    wait_for(lambda: stats()["landed"] == landed and stats()["pending"] == 0, f"{landed} rows landed")
    stop.set()
    thread.join(timeout=30)
    return stats()


def test_records_after_a_topic_reset_land_and_replays_are_still_skipped(ingestion: Ingestion) -> None:
    settings, runtime, stream, topic = ingestion.settings, ingestion.runtime, ingestion.stream, ingestion.topic
    produce(ingestion, 0, 40)
    first = run_until(ingestion.intake, ingestion, 40)
    assert first["kafka_since_start"]["replay_skipped"] == 0

    # The topic's reset: deleted and created again (a new topic id); offsets start again at 0.
    admin = AdminClient(settings.kafka_config())
    admin.delete_topics([topic])[topic].result(30)
    wait_for(lambda: topic not in admin.list_topics(timeout=10).topics, "the topic's deletion")
    time.sleep(1)
    intake = KafkaIntake(runtime.bus, runtime.pipelines, ingestion.intake.lander)
    intake.ensure_topics()
    produce(ingestion, 1000, 40)
    # Committed offsets of the earlier life may survive on a durable broker: the group starts from 0 as a new
    # consumer of the new topic would.
    rewind = Consumer(runtime.bus.consumer_config(GROUP))
    rewind.commit(offsets=[TopicPartition(topic, p, 0) for p in range(settings.kafka.partitions)], asynchronous=False)
    rewind.close()

    after = run_until(intake, ingestion, 80)
    since = intake.counters[stream]
    assert (since.received, since.landed, since.replay_skipped) == (40, 40, 0)
    assert after["records_in"] == 80 and after["replay_skipped"] == 0

    # Within one life, a re-read is still a replay: skipped, counted, and in the books.
    rewind = Consumer(runtime.bus.consumer_config(GROUP))
    rewind.commit(offsets=[TopicPartition(topic, p, 0) for p in range(settings.kafka.partitions)], asynchronous=False)
    rewind.close()
    again = KafkaIntake(runtime.bus, runtime.pipelines, ingestion.intake.lander)
    thread, stop = start_intake(again)
    wait_for(lambda: again.counters[stream].received == 40, "the re-read of the new life")
    stop.set()
    thread.join(timeout=30)
    counted = again.counters[stream]
    assert (counted.replay_skipped, counted.landed, counted.dead_lettered) == (40, 0, 0)
    assert counted.received == counted.landed + counted.dead_lettered + counted.replay_skipped


def test_the_intake_heals_after_its_broker_restarted_empty(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str
) -> None:
    broker = EmbeddedBroker(port=free_port(), log_path=tmp_path / "tansu.log")  # its own: restarted below
    broker.start()
    stream = f"heal-{unique}"
    write_pipeline(tmp_path / "pipelines", "heal", stream_pipeline(stream, dataset={"landing_batch_seconds": 0.5}))
    settings = make_settings(
        pipelines_dir=tmp_path / "pipelines",
        kafka={"bootstrap_servers": broker.bootstrap_servers, "session_timeout_ms": 2000},
    )
    try:
        with service_runtime("ingestion", settings) as runtime:
            spec = build(runtime)
            intake: KafkaIntake = spec.app.state.ingestion["intake"]
            _add_health(spec.app, runtime, spec)  # /healthz as a service process has it
            with TestClient(spec.app) as client:
                service = Ingestion(settings, runtime, client, intake, stream)

                def ready() -> bool:
                    return bool(client.get("/healthz").json()["ready"])

                def landed() -> int:
                    return int(client.get(f"/v1/streams/{stream}/stats").json()["landed"])

                thread, stop = start_intake(intake)
                assert ready()
                produce(service, 0, 30)
                wait_for(lambda: landed() == 30, "the records before the restart")

                # Readiness is watched all along: it must drop, not only be true at the end.
                seen: list[bool] = []
                watching = threading.Event()

                def watch() -> None:
                    while not watching.wait(0.05):
                        seen.append(intake.assigned)

                watcher = threading.Thread(target=watch, daemon=True)
                watcher.start()
                broker.stop()
                broker.start()  # same port, nothing kept: no topic, no group, no committed offset
                wait_for(lambda: False in seen, "the intake's readiness going down", timeout=60)
                wait_for(ready, "the intake's readiness back", timeout=90)
                health = client.get("/healthz").json()
                (status,) = [c for c in health["consumers"] if c["group"] == settings.kafka.ingestion_group]
                assert status["last_error"], "the health says why it was not ready"

                produce(service, 1000, 30)
                wait_for(lambda: landed() == 60, "the records after the restart", timeout=90)
                watching.set()
                stop.set()
                thread.join(timeout=30)
                counted = intake.counters[stream]
                assert (counted.received, counted.landed, counted.replay_skipped, counted.dead_lettered) == (
                    60,
                    60,
                    0,
                    0,
                )
    finally:
        broker.stop()
