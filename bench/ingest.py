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

import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from _common import own_broker_and_registry, produce, stream_pipeline, write_pipeline
from confluent_kafka import Consumer

from driftloop.clients.objectstore import open_object_store
from driftloop.contracts.settings import Settings
from driftloop.runtime.bus import ensure_topics
from driftloop.runtime.service import make_runtime
from driftloop.services.ingestion.handlers import stream_stats
from driftloop.services.ingestion.kafka_intake import KafkaIntake
from driftloop.services.ingestion.landing import Lander

BAD_EVERY = 1000  # amount < 0: a dead letter (so the DLQ path is in the measurement)


def record(i: int, now: datetime) -> dict[str, Any]:
    return {
        "customer_id": f"c{i % 5000}",
        "event_time": now - timedelta(seconds=i),
        "amount": -1.0 if i % BAD_EVERY == 0 else float(i % 900),
        "merchant_category": ("food", "travel", "games")[i % 3],
        "age": 18 + i % 60,
        "is_fraud": i % 2,
    }


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
        fields = [{"name": "merchant_category", "type": "string"}, {"name": "age", "type": "int"}]
        config = stream_pipeline("bench", "bench-model", fields, batch_rows=5000, batch_seconds=2)
        write_pipeline(home / "pipelines" / "bench.yaml", config)
        with own_broker_and_registry(home, home / "pipelines") as settings:
            runtime = make_runtime("bench-setup", settings)
            cfg = runtime.pipelines["bench-model"]
            ensure_topics(settings, [cfg.stream.topic])
            runtime.bus.close()

            t0 = time.perf_counter()
            produce(settings, cfg.stream.topic, cfg.stream.avro_schema(), n, record)
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


if __name__ == "__main__":
    main()
