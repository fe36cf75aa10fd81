"""Online feature lookups: p50 / p99 latency of ``POST /v1/features/online`` for 1 and 100 entities.

Starts its own embedded broker, schema registry and ONE features service process (free ports, a temporary home,
SQLite, the demo pipeline), fills the online store with ``--entities`` entities, then sends ``--requests``
sequential lookups per batch size from one client (keep-alive) and prints p50 / p99 / mean. The same lookups
straight on the store (no HTTP) are printed beside, to show what the HTTP hop costs.

Then the streaming worker's freshness: ``--stream-records`` records produced one at a time to the stream topic,
each timed from the broker's acknowledgement until its entity's values are in the online store (p50 / max).
Everything started is stopped by PID at the end.

    .venv/bin/python bench/online_features.py                  # about a minute on 2 cores
    .venv/bin/python bench/online_features.py --requests 2000 --entities 100000
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np

import driftloop.stack as stack_module
from driftloop.bus import EventBus
from driftloop.db.engine import create_engine_for
from driftloop.pipeline import PipelineConfig, load_pipeline
from driftloop.procs import free_port, wait_until
from driftloop.security import token_file
from driftloop.services.features.onlinestore import DatabaseOnlineStore
from driftloop.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def figures(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="lookups per batch size")
    parser.add_argument("--entities", type=int, default=20000, help="entities in the online store")
    parser.add_argument("--stream-records", type=int, default=30, help="records timed through the stream worker")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="driftloop-bench-online-"))
    ports = {"schemaregistry_port": free_port(), "features_port": free_port()}
    settings = Settings(
        home=tmp / "home",
        pipelines_dir=REPO / "pipelines",
        kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}", "session_timeout_ms": 2000},
        schema_registry={"url": f"http://127.0.0.1:{ports['schemaregistry_port']}"},
        services=ports,
    )
    pipeline = load_pipeline(REPO / "pipelines" / "transactions.yaml")
    stream = pipeline.stream.name

    stack_module.SERVICES = ("features",)  # only the features service (besides the broker and the registry)
    stack = stack_module.Stack(settings, on_progress=lambda line: print(f"  {line}", flush=True))
    print(f"bench/online_features.py: starting broker, schema registry and features in {tmp} ...", flush=True)
    try:
        stack.up()
        engine = create_engine_for(settings.database_url)
        store = DatabaseOnlineStore(engine)
        rng = random.Random(1)
        now = datetime.now(tz=UTC)
        keys = [f"c{i:07d}" for i in range(args.entities)]
        store.write(
            [
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
        )
        url = f"{settings.services.url('features')}/v1/features/online"
        print(f"\n{args.entities} entities online; {args.requests} sequential lookups per size, one client")
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
                for path, times in (("HTTP POST /v1/features", http_times), ("store.read (no HTTP)", direct_times)):
                    f = figures(times)
                    print(f"  {size:<16} {path:<24} {f['p50']:8.2f} {f['p99']:8.2f} {f['mean']:8.2f}")
            missing = client.post(url, json={"stream": stream, "entities": ["nobody", keys[0]]}).json()
            print(f"\n  an unknown entity is reported, not an error: missing={missing['missing']}")
        bus = EventBus(settings, producer_name="bench")
        try:
            delays = stream_freshness(bus, store, pipeline, args.stream_records)
        finally:
            bus.close()
        print("\nstreaming worker: record acknowledged by the broker -> its values in the online store")
        print(
            f"  {len(delays)} records one at a time: p50 {np.percentile(delays, 50) * 1000:.0f} ms, "
            f"max {max(delays) * 1000:.0f} ms"
        )
        engine.dispose()
        return 0
    finally:
        stack.down()


def stream_freshness(bus: EventBus, store: DatabaseOnlineStore, pipeline: PipelineConfig, count: int) -> list[float]:
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
