"""What the ingestion bench scripts share (they run as ``python bench/<name>.py``, so this folder is on the path):

- ``stream_pipeline(stream, model, fields, batch_rows, batch_seconds)``: the pipeline of a benchmark stream as a
  dict (amounts below 0 are dead letters); ``write_pipeline(path, config)`` writes it as YAML.
- ``start_schema_registry(settings, out)``: the schema registry as a process of its own, once it is ready.
- ``own_broker_and_registry(home, pipelines_dir)``: an embedded broker and a schema registry of the script's own
  (free ports, under ``home``) and the settings to reach them; both stopped by PID at the end.
- ``produce(settings, topic, schema, n, record)``: ``n`` records ``record(i, now)`` with the stock AvroSerializer.
- ``own_stack_settings(tmp, ports, **more)``: settings of a stack of its own (free ports, a home in ``tmp``, the
  project's pipelines) for the scripts that start one.
- ``latency_ms(seconds)``: p50 / p99 / mean / max of measured durations, in milliseconds.
- ``bench_folder(prefix, keep=...)``, ``add_keep_option(parser)``, ``tidy(code)``: a run's own folder (its stack's
  home, logs, database: a serving load test leaves ~350 MB of logged predictions), removed by
  ``raise SystemExit(tidy(main()))`` after a run that ended well unless ``--keep``; a failed run's folder stays.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from subprocess import Popen
from typing import Any

import numpy as np
import yaml
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from driftloop.contracts.settings import Settings, settings_env
from driftloop.ops.broker import EmbeddedBroker
from driftloop.ops.procs import free_port, http_ready, spawn, stop_pid, wait_until

REPO = Path(__file__).resolve().parents[1]


def stream_pipeline(
    stream: str, model: str, fields: Sequence[dict[str, Any]], *, batch_rows: int, batch_seconds: float
) -> dict[str, Any]:
    """A stream of transactions with ``fields`` between ``amount`` and the label; versions are cut on demand."""
    return {
        "stream": {
            "name": stream,
            "fields": [
                {"name": "customer_id", "type": "string", "nullable": False},
                {"name": "event_time", "type": "timestamp", "nullable": False},
                {"name": "amount", "type": "double", "nullable": False},
                *fields,
                {"name": "is_fraud", "type": "int"},
            ],
            "entity_key": "customer_id",
            "event_time": "event_time",
            "label": "is_fraud",
        },
        "quality": [{"rule": "range", "field": "amount", "min": 0}],
        "dataset": {"cut_every_rows": 0, "landing_batch_rows": batch_rows, "landing_batch_seconds": batch_seconds},
        "features": [{"name": "amount"}],
        "model": {"name": model},
    }


def write_pipeline(path: Path, config: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def start_schema_registry(settings: Settings, out: Path) -> Popen[bytes]:
    """The schema registry (``python -m driftloop.services.schemaregistry``) on ``settings``' port, ready."""
    registry = spawn([sys.executable, "-m", "driftloop.services.schemaregistry"], out, settings_env(settings))
    wait_until(lambda: http_ready(f"{settings.schema_registry.url}/healthz"), 60, "the schema registry")
    return registry


@contextmanager
def own_broker_and_registry(home: Path, pipelines_dir: Path) -> Iterator[Settings]:
    """An embedded broker and a schema registry on free ports (logs in ``home``; the platform's home is
    ``<home>/home``), the settings to reach them; both stopped by PID on the way out."""
    broker = EmbeddedBroker(port=free_port(), log_path=home / "tansu.log")
    registry_port = free_port()
    registry = None
    try:
        broker.start()
        settings = Settings(
            home=home / "home",
            pipelines_dir=pipelines_dir,
            kafka={"bootstrap_servers": broker.bootstrap_servers, "session_timeout_ms": 2000},
            schema_registry={"url": f"http://127.0.0.1:{registry_port}"},
            services={"schemaregistry_port": registry_port},
        )
        registry = start_schema_registry(settings, home / "registry.out")
        yield settings
    finally:
        if registry is not None:
            stop_pid(registry.pid)
        broker.stop()


def produce(
    settings: Settings,
    topic: str,
    schema: dict[str, Any],
    n: int,
    record: Callable[[int, datetime], dict[str, Any]],
    flush_timeout: float = 60,
) -> None:
    """``record(i, now)`` for ``i`` in ``range(n)``, keyed by ``i``, produced as fast as the client takes them."""
    serializer = AvroSerializer(SchemaRegistryClient({"url": settings.schema_registry.url}), json.dumps(schema))
    ctx = SerializationContext(topic, MessageField.VALUE)
    producer = Producer(settings.kafka_config(**{"linger.ms": 20, "batch.num.messages": 10000}))
    now = datetime.now(tz=UTC)
    for i in range(n):
        row = record(i, now)
        while True:
            try:
                producer.produce(topic, key=str(i).encode(), value=serializer(row, ctx))
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(flush_timeout) == 0


def own_stack_settings(
    tmp: Path, ports: dict[str, int], *, session_timeout_ms: int | None = 2000, **more: Any
) -> Settings:
    """Settings of a stack of its own: home ``<tmp>/home``, the project's pipelines, a broker and the schema
    registry on free ports (``ports`` holds ``schemaregistry_port`` and the services' ports), ``more`` on top.
    ``session_timeout_ms``: the consumers' (2000: the embedded broker holds each group join half of it; None: the
    default, 6000, whose heartbeats are a third as frequent)."""
    kafka: dict[str, Any] = {"bootstrap_servers": f"127.0.0.1:{free_port()}"}
    if session_timeout_ms is not None:
        kafka["session_timeout_ms"] = session_timeout_ms
    return Settings(
        home=tmp / "home",
        pipelines_dir=REPO / "pipelines",
        kafka=kafka,
        schema_registry={"url": f"http://127.0.0.1:{ports['schemaregistry_port']}"},
        services=ports,
        **more,
    )


def latency_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p99, mean and max of ``seconds``, in milliseconds."""
    ms = np.array(seconds) * 1000
    return {
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
        "max": float(ms.max()),
    }


# The folders this run made with ``bench_folder``, and whether to keep each after a run that ended well.
_FOLDERS: list[tuple[Path, bool]] = []


def bench_folder(prefix: str, *, keep: bool) -> Path:
    """A new folder of this run's own under the system's temporary directory, tidied by ``tidy``."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _FOLDERS.append((path, keep))
    return path


def add_keep_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the run's folder (stack home, logs, database) after a run that ended well; a failed run's stays",
    )


def tidy(code: int | None) -> int | None:
    """``main``'s exit code, after removing the folders of a run that ended well (0 or None) unless they are kept.
    A failed run's folders stay, and so do those of a run that raised (``tidy`` is not reached): their logs say why."""
    for path, keep in _FOLDERS:
        if code in (0, None) and not keep:
            shutil.rmtree(path, ignore_errors=True)
            print(f"removed {path} (--keep keeps it)", file=sys.stderr, flush=True)
        else:
            print(f"kept {path} (logs under it)", file=sys.stderr, flush=True)
    _FOLDERS.clear()
    return code
