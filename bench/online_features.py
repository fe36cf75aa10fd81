"""Online feature lookups: p50 / p99 latency of ``POST /v1/features/online`` for 1 and 100 entities, per online
store type (``--store database|redis|both``, default both).

For each store: starts its own embedded broker, schema registry and ONE features service process (free ports, a
temporary home, SQLite, the demo pipeline; for ``redis`` also a redis-server of its own, no persistence, and
``features.online_store = "redis"``), fills the online store with ``--entities`` entities, then sends
``--requests`` sequential lookups per batch size from one client (keep-alive) and prints p50 / p99 / mean. The
same lookups straight on the store (no HTTP) are printed beside, to show what the HTTP hop costs, and the time to
write the ``--entities`` rows (the materialization's write).

Then the streaming worker's freshness: ``--stream-records`` records produced one at a time to the stream topic,
each timed from the broker's acknowledgement until its entity's values are in the online store (p50 / max).
A summary table compares the stores. Everything started is stopped by PID at the end.

    .venv/bin/python bench/online_features.py                  # about two minutes on 2 cores
    .venv/bin/python bench/online_features.py --store redis --requests 2000 --entities 100000
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import latency_ms, own_stack_settings

import driftloop.ops.stack as stack_module
from driftloop.clients.credentials import token_file
from driftloop.clients.db.engine import create_engine_for
from driftloop.contracts.pipeline import PipelineConfig, load_pipeline
from driftloop.ops.procs import free_port, port_open, spawn, stop_pid, wait_until
from driftloop.runtime.bus import EventBus
from driftloop.services.features.onlinestore import OnlineStore, open_online_store

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["database", "redis", "both"], default="both", help="online store type")
    parser.add_argument("--requests", type=int, default=500, help="lookups per batch size")
    parser.add_argument("--entities", type=int, default=20000, help="entities in the online store")
    parser.add_argument("--stream-records", type=int, default=30, help="records timed through the stream worker")
    args = parser.parse_args()
    stores = ["database", "redis"] if args.store == "both" else [args.store]
    if "redis" in stores and shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed: run `make setup` (infra/setup-system.sh installs it)")
    summary = {store: bench_store(store, args) for store in stores}

    print(f"\nsummary ({args.entities} entities, {args.requests} lookups per size; ms)")
    print(
        f"  {'store':<10} {'write all':>10} {'1 HTTP p50':>11} {'1 HTTP p99':>11} {'100 HTTP p50':>13} "
        f"{'100 HTTP p99':>13} {'1 direct p50':>13} {'100 direct p50':>15} {'stream p50':>11}"
    )
    for store, f in summary.items():
        print(
            f"  {store:<10} {f['write_ms']:10.0f} {f['http_1']['p50']:11.2f} {f['http_1']['p99']:11.2f} "
            f"{f['http_100']['p50']:13.2f} {f['http_100']['p99']:13.2f} {f['direct_1']['p50']:13.2f} "
            f"{f['direct_100']['p50']:15.2f} {f['stream_p50_ms']:11.0f}"
        )
    return 0


def start_redis(workdir: Path) -> tuple[int, str]:
    """A redis-server of the bench's own (no persistence): its PID and URL."""
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = spawn([*cmd, "--dir", str(workdir)], workdir / "redis.log")
    try:
        wait_until(lambda: proc.poll() is None and port_open("127.0.0.1", port), 30, "redis-server")
    except Exception:
        stop_pid(proc.pid)
        raise
    return proc.pid, f"redis://127.0.0.1:{port}/0"


def bench_store(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"driftloop-bench-online-{kind}-"))
    ports = {"schemaregistry_port": free_port(), "features_port": free_port()}
    redis_pid = None
    features: dict[str, Any] = {"online_store": kind}
    if kind == "redis":
        redis_pid, redis_url = start_redis(tmp)
        features["redis"] = {"url": redis_url}
    settings = own_stack_settings(tmp, ports, features=features)
    pipeline = load_pipeline(REPO / "pipelines" / "transactions.yaml")
    stream = pipeline.stream.name
    result: dict[str, Any] = {}

    stack = stack_module.Stack(settings, on_progress=lambda line: print(f"  {line}", flush=True))
    print(f"\n=== store: {kind} ===", flush=True)
    print(f"bench/online_features.py: starting broker, schema registry and features in {tmp} ...", flush=True)
    try:
        stack.up(services=("features",))  # only the features service (besides the broker and the registry)
        engine = create_engine_for(settings.database_url)
        store = open_online_store(settings, engine)
        rng = random.Random(1)
        now = datetime.now(tz=UTC)
        keys = [f"c{i:07d}" for i in range(args.entities)]
        rows = [
            {
                "stream": stream,
                "entity": key,
                "values": {
                    "amount": rng.uniform(1, 500),
                    "log_amount": rng.uniform(0, 6),
                    "age": rng.randint(18, 90),
                    "hour": rng.randint(0, 23),
                    "merchant_category": rng.choice(["grocery", "travel", "gaming"]),
                },
                "event_time": now - timedelta(seconds=rng.randint(0, 86400)),
                "updated_at": now,
            }
            for key in keys
        ]
        start = time.perf_counter()
        store.write(rows)
        result["write_ms"] = (time.perf_counter() - start) * 1000
        print(f"\n{args.entities} entities written to the {kind} store in {result['write_ms']:.0f} ms")
        url = f"{settings.services.url('features')}/v1/features/online"
        print(f"{args.requests} sequential lookups per size, one client")
        print(f"  {'entities/lookup':<16} {'path':<24} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
        # POST routes need a token unless public: use the admin token `driftloop up` wrote (as serving does).
        headers = {"Authorization": f"Bearer {token_file(settings).read_text().strip()}"}
        with httpx.Client(timeout=10, headers=headers) as client:
            for size in (1, 100):
                batches = [rng.sample(keys, size) for _ in range(args.requests)]
                for batch in batches[:20]:  # warm up
                    client.post(url, json={"stream": stream, "entities": batch}).raise_for_status()
                http_times, direct_times = [], []
                for batch in batches:
                    start = time.perf_counter()
                    response = client.post(url, json={"stream": stream, "entities": batch})
                    http_times.append(time.perf_counter() - start)
                    body = response.json()
                    if response.status_code != 200 or body["missing"] or len(body["values"]) != size:
                        raise SystemExit(f"bad answer {response.status_code}: {response.text[:300]}")
                for batch in batches:
                    start = time.perf_counter()
                    store.read(stream, batch)
                    direct_times.append(time.perf_counter() - start)
                result[f"http_{size}"], result[f"direct_{size}"] = latency_ms(http_times), latency_ms(direct_times)
                for path, times in (("HTTP POST /v1/features", http_times), ("store.read (no HTTP)", direct_times)):
                    f = latency_ms(times)
                    print(f"  {size:<16} {path:<24} {f['p50']:8.2f} {f['p99']:8.2f} {f['mean']:8.2f}")
            missing = client.post(url, json={"stream": stream, "entities": ["nobody", keys[0]]}).json()
            print(f"\n  an unknown entity is reported, not an error: missing={missing['missing']}")
        bus = EventBus(settings, producer_name="bench")
        try:
            delays = stream_freshness(bus, store, pipeline, args.stream_records)
        finally:
            bus.close()
        result["stream_p50_ms"] = float(np.percentile(delays, 50) * 1000)
        print("\nstreaming worker: record acknowledged by the broker -> its values in the online store")
        print(
            f"  {len(delays)} records one at a time: p50 {result['stream_p50_ms']:.0f} ms, "
            f"max {max(delays) * 1000:.0f} ms"
        )
        engine.dispose()
        return result
    finally:
        stack.down()
        if redis_pid is not None:
            stop_pid(redis_pid)


def stream_freshness(bus: EventBus, store: OnlineStore, pipeline: PipelineConfig, count: int) -> list[float]:
    spec = pipeline.stream
    subject, schema = f"{spec.topic}-value", spec.avro_schema()

    def send_and_wait(entity: str, timeout: float) -> float:
        record = {
            "customer_id": entity,
            "event_time": datetime.now(tz=UTC),
            "amount": 12.5,
            "age": 40,
            "merchant_category": "travel",
            "hour": 3,
            "is_fraud": 0,
        }
        bus.publish_raw(spec.topic, bus.codec.encode(subject, schema, record), key=entity.encode())
        bus.flush()
        start = time.perf_counter()
        wait_until(lambda: entity in store.read(spec.name, [entity]), timeout, f"{entity} online", interval=0.01)
        return time.perf_counter() - start

    send_and_wait("warm-up", 120)  # the worker joins its group first
    return [send_and_wait(f"fresh-{i}", 30) for i in range(count)]


if __name__ == "__main__":
    raise SystemExit(main())
