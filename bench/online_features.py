"""Online feature lookups: p50 / p99 latency of ``POST /v1/features/online`` for 1 and 100 entities.

Starts its own embedded broker, schema registry and ONE features service process (free ports, a temporary home,
SQLite, the demo pipeline, the streaming worker off so that only lookups load the machine), fills the online store
with ``--entities`` entities, then sends ``--requests`` sequential lookups per batch size from one client
(keep-alive) and prints p50 / p99 / mean. The same lookups straight on the store (no HTTP) are printed beside,
to show what the HTTP hop costs. Everything started is stopped by PID at the end.

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
from driftloop.db.engine import create_engine_for
from driftloop.pipeline import load_pipeline
from driftloop.procs import free_port
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
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="driftloop-bench-online-"))
    ports = {"schemaregistry_port": free_port(), "features_port": free_port()}
    settings = Settings(
        home=tmp / "home",
        pipelines_dir=REPO / "pipelines",
        kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}", "session_timeout_ms": 2000},
        schema_registry={"url": f"http://127.0.0.1:{ports['schemaregistry_port']}"},
        services=ports,
        features={"streaming": False},
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
        engine.dispose()
        return 0
    finally:
        stack.down()


if __name__ == "__main__":
    raise SystemExit(main())
