"""Exact counts under ``kill -9``: two ingestion processes (``python -m driftloop.services.ingestion``) in one
consumer group split the stream's partitions; one is SIGKILLed mid-stream (its partitions move to the other in a
rebalance) and restarted (a second rebalance). Records in = landed + dead letters, exactly; no record lands
twice, and the dataset version cut afterwards holds each good record once. PostgreSQL, the real broker, the
stock Avro serializer."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import Popen

import httpx
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from driftloop.db import create_engine_for, migrate
from driftloop.db.models import DeadLetter, LandedBatch
from driftloop.pipeline import load_pipeline
from driftloop.procs import free_port, http_ready, pid_alive, spawn, stop_pid, wait_until
from driftloop.settings import Settings, settings_env

pytestmark = pytest.mark.integration

PIPELINE = """
stream:
  name: {stream}
  fields:
    - {{name: id, type: long, nullable: false}}
    - {{name: customer_id, type: string, nullable: false}}
    - {{name: event_time, type: timestamp, nullable: false}}
    - {{name: amount, type: double, nullable: false}}
    - {{name: is_fraud, type: int}}
  entity_key: customer_id
  event_time: event_time
  label: is_fraud
quality:
  - {{rule: range, field: amount, min: 0}}
dataset:
  cut_every_rows: 0
  landing_batch_rows: 40
  landing_batch_seconds: 0.3
features:
  - {{name: amount}}
model: {{name: model-{stream}}}
"""

TOTAL = 3000
OUT_OF_RANGE_EVERY = 50  # amount -1: dead letter out_of_range
GARBAGE_EVERY = 300  # not Avro at all: dead letter bad_magic_byte


def _start(settings: Settings, port: int, out: Path) -> Popen[bytes]:
    env = settings_env(
        settings.model_copy(update={"services": settings.services.model_copy(update={"ingestion_port": port})})
    )
    return spawn([sys.executable, "-m", "driftloop.services.ingestion"], out, env)


def _assigned(out: Path) -> list[str]:
    """Every non-empty assignment a process logged."""
    return [m for m in re.findall(r"ingestion assigned (\[.*\])", out.read_text()) if m != "[]"]


def test_exact_counts_when_an_ingestion_process_is_killed_mid_stream(
    make_settings: Callable[..., Settings], postgres_url: str, tmp_path: Path, unique: str
) -> None:
    stream = f"crash-{unique}"
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "crash.yaml").write_text(PIPELINE.format(stream=stream))
    cfg = load_pipeline(pipelines / "crash.yaml")
    engine = create_engine_for(postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "s{unique}"')
    engine.dispose()
    settings = make_settings(
        pipelines_dir=pipelines,
        database={"url": postgres_url + f"?options=-csearch_path%3Ds{unique}"},
        kafka={
            "bootstrap_servers": make_settings().kafka.bootstrap_servers,
            "session_timeout_ms": 2000,
            "partitions": 4,
            "ingestion_group": f"ingestion-{unique}",
        },
    )
    migrate(settings.database_url)
    engine = create_engine_for(settings.database_url)
    ports = {"a": free_port(), "b": free_port()}
    outs = {name: tmp_path / f"ingestion-{name}.out" for name in ("a", "a2", "b")}
    procs: dict[str, Popen[bytes]] = {}

    def landed_rows() -> int:
        with engine.connect() as conn:
            return int(
                conn.scalar(
                    sa.select(sa.func.coalesce(sa.func.sum(LandedBatch.rows), 0)).where(LandedBatch.stream == stream)
                )
                or 0
            )

    def dead_letters() -> int:
        with engine.connect() as conn:
            return int(conn.scalar(sa.select(sa.func.count()).where(DeadLetter.stream == stream)) or 0)

    try:
        procs["a"] = _start(settings, ports["a"], outs["a"])
        procs["b"] = _start(settings, ports["b"], outs["b"])
        for name in ("a", "b"):
            wait_until(lambda n=name: http_ready(f"http://127.0.0.1:{ports[n]}/healthz"), 90, f"ingestion {name}")
        # Both are in the group: the topic's 4 partitions are split between them.
        wait_until(lambda: bool(_assigned(outs["a"])) and bool(_assigned(outs["b"])), 30, "a split assignment")

        serializer = AvroSerializer(
            SchemaRegistryClient({"url": settings.schema_registry.url}), json.dumps(cfg.stream.avro_schema())
        )
        ctx = SerializationContext(cfg.stream.topic, MessageField.VALUE)
        now = datetime.now(tz=UTC)
        expected_bad = Counter[str]()
        expected_good: set[int] = set()

        def produce() -> None:
            producer = Producer(settings.kafka_config(**{"linger.ms": 5}))
            for i in range(TOTAL):
                if i % GARBAGE_EVERY == GARBAGE_EVERY - 1:
                    producer.produce(cfg.stream.topic, key=str(i).encode(), value=b"not avro %d" % i)
                    expected_bad["bad_magic_byte"] += 1
                else:
                    amount = -1.0 if i % OUT_OF_RANGE_EVERY == 0 else float(i % 500)
                    record = {
                        "id": i,
                        "customer_id": f"c{i % 97}",
                        "event_time": now - timedelta(seconds=i),
                        "amount": amount,
                        "is_fraud": i % 2,
                    }
                    producer.produce(cfg.stream.topic, key=str(i).encode(), value=serializer(record, ctx))
                    if amount < 0:
                        expected_bad["out_of_range"] += 1
                    else:
                        expected_good.add(i)
                if i % 100 == 99:
                    producer.flush(30)
                    time.sleep(0.1)  # a stream, not a burst: the kill lands in the middle of it
            assert producer.flush(30) == 0

        producing = threading.Thread(target=produce)
        producing.start()
        wait_until(lambda: landed_rows() >= 300, 60, "the first rows to land")
        os.killpg(procs["a"].pid, signal.SIGKILL)
        procs["a"].wait(timeout=10)
        killed_at = landed_rows() + dead_letters()
        assert killed_at < TOTAL, "the kill must come before the stream is fully handled"
        # b takes over a's partitions after the session timeout, mid-stream; then a comes back (another rebalance).
        time.sleep(3)
        procs["a2"] = _start(settings, ports["a"], outs["a2"])
        wait_until(lambda: http_ready(f"http://127.0.0.1:{ports['a']}/healthz"), 90, "the restarted ingestion a")
        producing.join(timeout=120)
        assert not producing.is_alive()

        wait_until(lambda: landed_rows() + dead_letters() >= TOTAL, 90, f"all {TOTAL} records to be accounted for")
        time.sleep(2.0)  # anything beyond the exact count would be a duplicate: give it the chance to appear
        assert (landed_rows(), dead_letters()) == (len(expected_good), sum(expected_bad.values()))

        with engine.connect() as conn:
            by_reason = dict(
                conn.execute(
                    sa.select(DeadLetter.reason, sa.func.count())
                    .where(DeadLetter.stream == stream)
                    .group_by(DeadLetter.reason)
                ).all()
            )
            keys = list(conn.scalars(sa.select(LandedBatch.object_key).where(LandedBatch.stream == stream)))
        assert by_reason == dict(expected_bad)
        landed_ids: list[int] = []
        for key in keys:
            landed_ids += pq.read_table(settings.object_store_path / key, columns=["id"]).column("id").to_pylist()
        assert len(landed_ids) == len(set(landed_ids)), "a record landed twice"
        assert set(landed_ids) == expected_good
        assert _assigned(outs["a2"]), "the restarted process took partitions again"

        # The dataset version holds each good record exactly once.
        response = httpx.post(f"http://127.0.0.1:{ports['b']}/v1/streams/{stream}/datasets", timeout=240)
        assert response.status_code == 200, response.text
        version = response.json()
        assert version["row_count"] == len(expected_good)
        files = sorted((settings.object_store_path / f"datasets/{stream}/v000001").rglob("*.parquet"))
        version_ids = [i for f in files for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
        assert sorted(version_ids) == sorted(expected_good)
    finally:
        for proc in procs.values():
            stop_pid(proc.pid)
        engine.dispose()
    assert not any(pid_alive(p.pid) for p in procs.values())
