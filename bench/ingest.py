"""Records/s through ingestion (Avro decode + validate + land as Parquet + offsets committed) against a bare
confluent-kafka consume loop over the same records on the same broker, in one run.

Starts its own embedded broker and schema registry (free ports, a temporary home), produces N records with the
stock AvroSerializer (a few bad ones, which become dead letters), then times
  1. the bare loop: a Consumer in a fresh group reading each message's value and counting, nothing else;
  2. ingestion: the service's KafkaIntake + Lander (the same code the service runs), in a fresh group, until
     landed + dead-lettered == N in its counters (the database is checked to agree at the end).
Both clocks start at the first record received (group joins are not measured). Stops everything by PID.

    .venv/bin/python bench/ingest.py [N]        # default N=100000; about 1-2 minutes on 2 cores
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from driftloop.broker import EmbeddedBroker
from driftloop.bus import ensure_topics
from driftloop.objectstore import open_object_store
from driftloop.procs import free_port, http_ready, spawn, stop_pid, wait_until
from driftloop.service import make_runtime
from driftloop.services.ingestion.handlers import stream_stats
from driftloop.services.ingestion.kafka_intake import KafkaIntake
from driftloop.services.ingestion.landing import Lander
from driftloop.settings import Settings, settings_env

PIPELINE = """
stream:
  name: bench
  fields:
    - {name: customer_id, type: string, nullable: false}
    - {name: event_time, type: timestamp, nullable: false}
    - {name: amount, type: double, nullable: false}
    - {name: merchant_category, type: string}
    - {name: age, type: int}
    - {name: is_fraud, type: int}
  entity_key: customer_id
  event_time: event_time
  label: is_fraud
quality:
  - {rule: range, field: amount, min: 0}
dataset:
  cut_every_rows: 0
  landing_batch_rows: 5000
  landing_batch_seconds: 2
features:
  - {name: amount}
model: {name: bench-model}
"""

BAD_EVERY = 1000  # amount < 0: a dead letter (so the DLQ path is in the measurement)


def produce(settings: Settings, topic: str, schema: dict, n: int) -> None:
    serializer = AvroSerializer(SchemaRegistryClient({"url": settings.schema_registry.url}), json.dumps(schema))
    ctx = SerializationContext(topic, MessageField.VALUE)
    producer = Producer(settings.kafka_config(**{"linger.ms": 20, "batch.num.messages": 10000}))
    now = datetime.now(tz=UTC)
    for i in range(n):
        record = {
            "customer_id": f"c{i % 5000}",
            "event_time": now - timedelta(seconds=i),
            "amount": -1.0 if i % BAD_EVERY == 0 else float(i % 900),
            "merchant_category": ("food", "travel", "games")[i % 3],
            "age": 18 + i % 60,
            "is_fraud": i % 2,
        }
        while True:
            try:
                producer.produce(topic, key=str(i).encode(), value=serializer(record, ctx))
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0


def bare_loop(settings: Settings, topic: str, n: int) -> float:
    consumer = Consumer(
        settings.kafka_config(
            **{"group.id": f"bare-{time.time_ns()}", "auto.offset.reset": "earliest", "enable.auto.commit": False}
        )
    )
    consumer.subscribe([topic])
    seen, started = 0, 0.0
    try:
        while seen < n:
            messages = consumer.consume(num_messages=500, timeout=0.2)
            for msg in messages:
                if msg.error():
                    continue
                if seen == 0:
                    started = time.perf_counter()
                msg.value()  # a loop over the records reads them; nothing more
                seen += 1
        return time.perf_counter() - started
    finally:
        consumer.close()


def ingestion_loop(settings: Settings, n: int) -> tuple[float, dict]:
    runtime = make_runtime("ingestion-bench", settings)
    lander = Lander(runtime.bus, open_object_store(settings))
    intake = KafkaIntake(runtime.bus, runtime.pipelines, lander)
    counters = intake.counters["bench"]
    stop = threading.Event()
    thread = threading.Thread(target=intake.run, args=(stop,), daemon=True)
    thread.start()
    while counters.received == 0:
        time.sleep(0.001)
    started = time.perf_counter()
    while counters.received < n:
        time.sleep(0.002)
    # Stopping lands what is still in memory and commits the offsets: part of the measured work.
    stop.set()
    thread.join(timeout=60)
    elapsed = time.perf_counter() - started
    assert counters.landed + counters.dead_lettered == n
    stats = stream_stats(lander, "bench")
    runtime.bus.close()
    return elapsed, stats


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-ingest-") as tmp:
        home = Path(tmp)
        (home / "pipelines").mkdir()
        (home / "pipelines" / "bench.yaml").write_text(PIPELINE)
        broker = EmbeddedBroker(port=free_port(), log_path=home / "tansu.log")
        registry_port = free_port()
        settings = Settings(
            home=home / "home",
            pipelines_dir=home / "pipelines",
            kafka={"bootstrap_servers": f"127.0.0.1:{0}", "session_timeout_ms": 2000},
            schema_registry={"url": f"http://127.0.0.1:{registry_port}"},
            services={"schemaregistry_port": registry_port},
        )
        registry = None
        try:
            broker.start()
            settings = settings.model_copy(
                update={"kafka": settings.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})}
            )
            registry = spawn(
                [sys.executable, "-m", "driftloop.services.schemaregistry"],
                home / "registry.out",
                settings_env(settings),
            )
            wait_until(lambda: http_ready(f"{settings.schema_registry.url}/healthz"), 60, "the schema registry")
            runtime = make_runtime("bench-setup", settings)
            cfg = runtime.pipelines["bench-model"]
            ensure_topics(settings, [cfg.stream.topic])
            runtime.bus.close()

            t0 = time.perf_counter()
            produce(settings, cfg.stream.topic, cfg.stream.avro_schema(), n)
            print(f"produced {n} records in {time.perf_counter() - t0:.1f}s (stock AvroSerializer)")

            bare = bare_loop(settings, cfg.stream.topic, n)
            ingest, stats = ingestion_loop(settings, n)
            assert stats["landed"] + stats["dead_lettered"] == n, stats
            print(f"bare confluent-kafka consume loop: {n / bare:>10,.0f} records/s ({bare:.2f}s)")
            print(
                f"ingestion (decode+validate+land):  {n / ingest:>10,.0f} records/s ({ingest:.2f}s; "
                f"landed {stats['landed']} in {stats['landed_batches']} batches, dead letters {stats['dead_lettered']})"
            )
            print(f"ratio ingestion / bare: {bare / ingest:.2f} (target >= 0.5)")
        finally:
            if registry is not None:
                stop_pid(registry.pid)
            broker.stop()


if __name__ == "__main__":
    main()
