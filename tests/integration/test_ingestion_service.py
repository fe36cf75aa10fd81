"""The ingestion service as its own process (`python -m driftloop.services.ingestion`): ready once its Kafka
consumer is assigned, lands Avro records from the stock serializer, cuts a version on demand, stops on SIGTERM."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from pipeline_support import AMOUNT_NOT_NEGATIVE, stream_pipeline, write_pipeline

from driftloop.clients.db import migrate
from driftloop.contracts.settings import Settings, settings_env
from driftloop.ops.procs import free_port, http_ready, pid_alive, spawn, stop_pid, wait_until

pytestmark = pytest.mark.integration


def test_service_process(make_settings: Callable[..., Settings], tmp_path: Path, unique: str) -> None:
    stream = f"svc-{unique}"
    pipelines = tmp_path / "pipelines"
    batches = {"landing_batch_rows": 10, "landing_batch_seconds": 0.5}
    config = stream_pipeline(stream, optional_fields=(), quality=[AMOUNT_NOT_NEGATIVE], dataset=batches)
    cfg = write_pipeline(pipelines, "svc", config)
    port = free_port()
    settings = make_settings(pipelines_dir=pipelines, services={"ingestion_port": port})
    migrate(settings.database_url)
    proc = spawn(
        [sys.executable, "-m", "driftloop.services.ingestion"], tmp_path / "ingestion.out", settings_env(settings)
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ready(f"{url}/healthz"), 90, "the ingestion service to be ready")
        health = httpx.get(f"{url}/healthz").json()
        assert health["checks"] == {"kafka_assigned": True}

        serializer = AvroSerializer(
            SchemaRegistryClient({"url": settings.schema_registry.url}), json.dumps(cfg.stream.avro_schema())
        )
        ctx = SerializationContext(cfg.stream.topic, MessageField.VALUE)
        now = datetime.now(tz=UTC)
        producer = Producer(settings.kafka_config())
        for i in range(35):
            amount = -1.0 if i == 7 else float(i)
            record = {"customer_id": f"c{i}", "event_time": now - timedelta(seconds=i), "amount": amount, "is_fraud": 0}
            producer.produce(cfg.stream.topic, key=str(i).encode(), value=serializer(record, ctx))
        producer.produce(cfg.stream.topic, value=b"garbage")
        assert producer.flush(30) == 0

        def accounted() -> bool:
            stats = httpx.get(f"{url}/v1/streams/{stream}/stats").json()
            return stats["landed"] + stats["dead_lettered"] == 36

        wait_until(accounted, 60, "all 36 records to be landed or dead-lettered")
        stats = httpx.get(f"{url}/v1/streams/{stream}/stats").json()
        assert (stats["landed"], stats["by_reason"]) == (34, {"bad_magic_byte": 1, "out_of_range": 1})

        response = httpx.post(f"{url}/v1/streams/{stream}/datasets", timeout=180)
        assert response.status_code == 200, response.text
        assert (response.json()["row_count"], response.json()["version"]) == (34, 1)
        assert httpx.post(f"{url}/v1/streams/{stream}/datasets", timeout=60).status_code == 409
    finally:
        assert stop_pid(proc.pid)
    assert not pid_alive(proc.pid)
    assert proc.wait(timeout=10) == 0
    log = (settings.log_dir / "ingestion.log").read_text()
    assert "ingestion stopped" in log
