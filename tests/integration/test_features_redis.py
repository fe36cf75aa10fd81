"""The features service process (``python -m driftloop.services.features``) on the Redis online store, with the
real broker, registry and Redis: its streaming worker turns stream records into online values in Redis, served by
``POST /v1/features/online``. (Materialization into Redis: ``test_features_materialize.py``, which has Spark up.)"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa

from driftloop.clients.db import create_engine_for, migrate
from driftloop.clients.db.models import OnlineFeatures
from driftloop.contracts.pipeline import PipelineConfig, load_pipeline
from driftloop.contracts.settings import Settings, settings_env
from driftloop.ops.procs import free_port, http_ready, port_open, spawn, stop_pid, wait_until
from driftloop.runtime.bus import ensure_topics
from driftloop.runtime.service import make_runtime

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 4, 1, 9, tzinfo=UTC)
AGGREGATES = (
    "  - {name: amount_sum_1h, aggregate: sum, source: amount, window: 1h}\n"
    "  - {name: tx_count_1h, aggregate: count, window: 1h}\n"
)


def aggregate_pipeline(directory: Path, stream: str) -> PipelineConfig:
    text = (REPO / "pipelines" / "transactions.yaml").read_text().replace("name: transactions", f"name: {stream}")
    text = text.replace("name: fraud-detector", f"name: model-{stream}")
    anchor = "  - {name: merchant_category, kind: categorical}\n"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stream}.yaml").write_text(text.replace(anchor, anchor + AGGREGATES))
    return load_pipeline(directory / f"{stream}.yaml")


def redis_settings(make_settings: Callable[..., Settings], redis_url: str, prefix: str, **overrides: Any) -> Settings:
    return make_settings(
        features={"online_store": "redis", "redis": {"url": redis_url, "key_prefix": prefix}}, **overrides
    )


def test_service_process_serves_streaming_features_from_redis(
    make_settings: Callable[..., Settings], redis_server: str, tmp_path: Path, unique: str
) -> None:
    stream, prefix = f"rs-{unique}", f"svc-{unique}:"
    pipeline = aggregate_pipeline(tmp_path / "pipelines", stream)
    settings = redis_settings(
        make_settings, redis_server, prefix, pipelines_dir=tmp_path / "pipelines", security={"enabled": False}
    )
    migrate(settings.database_url)
    runtime = make_runtime("features", settings)
    ensure_topics(settings, [pipeline.stream.topic], partitions=2)

    # Three records per entity, sent newest first for some: the online value follows event time, not arrival.
    minutes = {"c1": [0, 30, 90], "c2": [50, 10, 0], "c3": [5, 6, 7]}
    sent: dict[str, list[tuple[datetime, float]]] = {}
    subject, schema = f"{pipeline.stream.topic}-value", pipeline.stream.avro_schema()
    for entity, offsets in minutes.items():
        for i, offset in enumerate(offsets):
            at, amount = T0 + timedelta(minutes=offset), float(10 * (i + 1) + offset)
            sent.setdefault(entity, []).append((at, amount))
            record = {
                "customer_id": entity,
                "event_time": at,
                "amount": amount,
                "age": 30,
                "merchant_category": "travel",
                "hour": at.hour,
                "is_fraud": 0,
            }
            runtime.bus.publish_raw(
                pipeline.stream.topic, runtime.bus.codec.encode(subject, schema, record), key=entity.encode()
            )
    runtime.bus.flush()

    expected = {}
    for entity, records in sent.items():
        newest, amount = max(records)
        in_window = [a for t, a in records if newest - timedelta(hours=1) < t <= newest]
        expected[entity] = (newest, amount, float(len(in_window)), float(sum(in_window)))

    port = free_port()
    env = {**settings_env(settings), "DRIFTLOOP_SERVICES__FEATURES_PORT": str(port)}
    proc = spawn([sys.executable, "-m", "driftloop.services.features"], tmp_path / "features.out", env)
    url = f"http://127.0.0.1:{port}"
    lookup = {"stream": stream, "entities": [*expected, "nobody"]}

    def served() -> dict[str, Any] | None:
        body = httpx.post(f"{url}/v1/features/online", json=lookup, timeout=10).json()
        for entity, (newest, *_rest) in expected.items():
            if entity not in body["values"] or datetime.fromisoformat(body["values"][entity]["event_time"]) != newest:
                return None
        return body

    try:
        wait_until(lambda: http_ready(f"{url}/healthz"), 120, "the features service")
        assert httpx.get(f"{url}/healthz").json()["checks"] == {"online_store": True}
        wait_until(lambda: served() is not None, 180, "the streamed records' values served from Redis")
        body = served()
    finally:
        assert stop_pid(proc.pid)
    assert proc.wait(timeout=5) == 0, (tmp_path / "features.out").read_text()[-2000:]

    assert body is not None and body["missing"] == ["nobody"]
    for entity, (newest, amount, count, total) in expected.items():
        values = body["values"][entity]
        assert values["amount"] == amount and values["tx_count_1h"] == count
        assert values["amount_sum_1h"] == pytest.approx(total)
        assert datetime.fromisoformat(body["freshness"][entity]["event_time"]) == newest
        assert body["freshness"][entity]["updated_at"] is not None
    # The values live in Redis under the configured prefix, not in the database table.
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    try:
        assert sorted(client.keys(f"{prefix}*")) == sorted(f"{prefix}{stream}:{e}" for e in expected)
    finally:
        client.close()
    engine = create_engine_for(settings.database_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).where(OnlineFeatures.stream == stream)).scalar_one()
    assert rows == 0
    engine.dispose()
    runtime.bus.close()


def start_redis(port: int, workdir: Path) -> int:
    proc = spawn(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        workdir / "redis.log",
    )
    wait_until(lambda: proc.poll() is None and port_open("127.0.0.1", port), 30, "redis-server")
    return proc.pid


def test_streaming_worker_holds_its_batch_while_redis_is_down(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Records arriving while Redis is down reach it once Redis is back (the batch is retried, not dropped)."""
    import logging
    import threading

    from driftloop.services.features.onlinestore import RedisOnlineStore
    from driftloop.services.features.streamworker import stream_worker_loop

    caplog.set_level(logging.WARNING)
    stream, port = f"rd-{unique}", free_port()
    pipeline = aggregate_pipeline(tmp_path / "pipelines", stream)
    settings = make_settings(
        pipelines_dir=tmp_path / "pipelines",
        features={"online_store": "redis", "redis": {"port": port, "timeout_seconds": 2}},
    )
    migrate(settings.database_url)
    runtime = make_runtime("features", settings)
    ensure_topics(settings, [pipeline.stream.topic], partitions=1)
    subject, schema = f"{pipeline.stream.topic}-value", pipeline.stream.avro_schema()

    def send(entity: str, minute: int, amount: float) -> None:
        at = T0 + timedelta(minutes=minute)
        record = {
            "customer_id": entity,
            "event_time": at,
            "amount": amount,
            "age": 30,
            "merchant_category": "travel",
            "hour": at.hour,
            "is_fraud": 0,
        }
        runtime.bus.publish_raw(
            pipeline.stream.topic, runtime.bus.codec.encode(subject, schema, record), key=entity.encode()
        )
        runtime.bus.flush()

    redis_pid = start_redis(port, tmp_path)
    worker = threading.Thread(
        target=stream_worker_loop(runtime, group=f"features-stream-{unique}", pipelines=[pipeline]),
        args=(runtime.bus.stop_event,),
        daemon=True,
    )
    try:
        store = RedisOnlineStore(settings.features.redis)
        worker.start()
        send("c1", 0, 5.0)
        wait_until(lambda: "c1" in store.read(stream, ["c1"]), 120, "the first record online")

        stop_pid(redis_pid)
        send("c1", 10, 7.0)
        wait_until(lambda: f"127.0.0.1:{port}/0 does not answer" in caplog.text, 60, "the worker to meet Redis down")

        redis_pid = start_redis(port, tmp_path)  # empty: no persistence
        wait_until(lambda: store.read(stream, ["c1"]).get("c1") is not None, 60, "the held batch written")
        value = store.read(stream, ["c1"])["c1"]
        # Recomputed from every stored record of the entity, not only the held one.
        assert value.event_time == T0 + timedelta(minutes=10)
        assert value.values["tx_count_1h"] == 2.0 and value.values["amount_sum_1h"] == 12.0
    finally:
        runtime.bus.stop_event.set()
        worker.join(timeout=60)
        stop_pid(redis_pid)
    assert not worker.is_alive()
    runtime.bus.close()
