"""Online feature lookups side by side with Feast's feature server, in one run on the same machine and rows.

1. ``feast serve`` (feast==0.67.0, installed by this script into a virtualenv of its own under the state folder,
   ``--state-dir``, default ``<repo>/.driftloop/bench``; never a dependency of driftloop): a repo with a SQLite
   online store and one feature view of the same ``--entities`` rows, one worker, no access log.
2. driftloop, per online store type (``--store database|redis|both``, default both): its own embedded broker,
   schema registry and features service (default settings: one HTTP worker per core), and for ``redis`` a
   redis-server of its own (no persistence) stopped by PID at the end. The same rows are written to the store.

For 1 and 100 entities per lookup and for ``--concurrency`` client threads (default 1 and 8), each server gets
``--seconds`` of keep-alive lookups (random entities, all present) after a short warm-up: requests/s, p50, p99
and failed requests (non-200, transport errors, or a sampled answer without every entity's values). Then the
ratios driftloop/Feast, the same lookups straight on the store (no HTTP), and the streaming worker's freshness
(``--stream-records`` records, each from the broker's acknowledgement to its values online).

Targets (not test assertions): at least 1.5x Feast for 1 entity and 3x for 100 entities, C=1 and C=8, none failed.

    .venv/bin/python bench/online_features.py                 # about three minutes on 2 cores
    .venv/bin/python bench/online_features.py --store database --seconds 3 --json
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from _common import add_keep_option, bench_folder, latency_ms, own_stack_settings, tidy

import driftloop.ops.stack as stack_module
from driftloop.clients.credentials import token_file
from driftloop.clients.db.engine import create_engine_for
from driftloop.contracts.pipeline import PipelineConfig, load_pipeline
from driftloop.ops.procs import free_port, http_ready, port_open, spawn, stop_pid, wait_until
from driftloop.runtime.bus import EventBus
from driftloop.services.features.onlinestore import OnlineStore, open_online_store

REPO = Path(__file__).resolve().parents[1]
FEAST_VERSION = "0.67.0"
FEATURES = ["amount", "log_amount", "age", "hour", "merchant_category"]
SIZES = (1, 100)
CHECK_EVERY = 25  # one answer in this many is parsed and checked in full (parsing all would load the client)

FEAST_DEFINITIONS = """
from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String

customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
source = FileSource(path="data/rows.parquet", timestamp_field="event_time")
transactions = FeatureView(
    name="transactions",
    entities=[customer],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="amount", dtype=Float64),
        Field(name="log_amount", dtype=Float64),
        Field(name="age", dtype=Int64),
        Field(name="hour", dtype=Int64),
        Field(name="merchant_category", dtype=String),
    ],
    source=source,
    online=True,
)
"""

FEAST_LOAD = """
import sys
import pandas as pd
from feast import FeatureStore
sys.path.insert(0, ".")
from definitions import customer, transactions
store = FeatureStore(repo_path=".")
store.apply([customer, transactions])
store.write_to_online_store("transactions", pd.read_parquet("data/rows.parquet"))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["database", "redis", "both"], default="both", help="online store type")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of load per server, size and C")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="client threads")
    parser.add_argument("--entities", type=int, default=20000, help="entities in each online store")
    parser.add_argument("--stream-records", type=int, default=5, help="records timed through the stream worker")
    parser.add_argument("--state-dir", type=Path, default=REPO / ".driftloop" / "bench", help="Feast's virtualenv")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line at the end")
    add_keep_option(parser)
    args = parser.parse_args()
    stores = ["database", "redis"] if args.store == "both" else [args.store]
    if "redis" in stores and shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed: run `make setup` (infra/setup-system.sh installs it)")
    rows = make_rows(args.entities)
    keys = [row["entity"] for row in rows]

    results: dict[str, dict[str, Any]] = {"feast": bench_feast(rows, keys, args)}
    details: dict[str, Any] = {}
    for store in stores:
        results[store], details[store] = bench_driftloop(store, rows, keys, args)

    print(f"\nlookups/s (p99 ms), {args.seconds:g}s each, {args.entities} entities per store, same machine and rows")
    runs = [(size, c) for size in SIZES for c in args.concurrency]
    print(f"  {'server':<22}" + "".join(f"{f'e{size} C={c}':>20}" for size, c in runs) + f"{'failed':>8}")
    for server, by_run in results.items():
        label = "feast serve (sqlite)" if server == "feast" else f"driftloop ({server})"
        cells = "".join(f"{by_run[key(s, c)]['rps']:>11.0f} ({by_run[key(s, c)]['p99']:5.1f})" for s, c in runs)
        print(f"  {label:<22}{cells}{sum(r['failed'] for r in by_run.values()):>8}")
    summary: dict[str, Any] = {"bench": "online_features"}
    for store in stores:
        print(f"  {'ratio ' + store + '/feast':<22}", end="")
        for size, c in runs:
            ratio = results[store][key(size, c)]["rps"] / max(results["feast"][key(size, c)]["rps"], 1e-9)
            summary[f"ratio_{store}_vs_feast_e{size}_c{c}"] = round(ratio, 2)
            print(f"{ratio:>19.2f}x", end="")
        print()
    # The headline ratios: the slower of the stores for each run.
    for size, c in runs:
        summary[f"ratio_vs_feast_e{size}_c{c}"] = min(summary[f"ratio_{s}_vs_feast_e{size}_c{c}"] for s in stores)
    for server, by_run in results.items():
        for run_key, figures in by_run.items():
            summary[f"{server}_{run_key}_rps"] = round(figures["rps"], 1)
            summary[f"{server}_{run_key}_p99_ms"] = round(figures["p99"], 2)
    # "failed" counts driftloop's (the target); Feast's own are shown apart (its default worker restarts every
    # 1000 requests, which can drop a connection).
    summary["failed"] = sum(r["failed"] for s in stores for r in results[s].values())
    summary["feast_failed"] = sum(r["failed"] for r in results["feast"].values())
    targets = {1: 1.5, 100: 3.0}
    met = all(summary[f"ratio_vs_feast_e{s}_c{c}"] >= targets[s] for s, c in runs) and summary["failed"] == 0
    summary["targets_met"] = met
    for store, extra in details.items():
        summary.update({f"{store}_{name}": value for name, value in extra.items()})
    print(f"\ntargets (>= 1.5x Feast for 1 entity, >= 3x for 100, none failed): {'met' if met else 'NOT met'}")
    print(f"failed lookups: driftloop {summary['failed']}, Feast {summary['feast_failed']}")
    if args.json:
        print(json.dumps(summary))
    return 0


def key(size: int, concurrency: int) -> str:
    return f"e{size}_c{concurrency}"


def make_rows(count: int) -> list[dict[str, Any]]:
    rng = random.Random(1)
    now = datetime.now(tz=UTC).replace(microsecond=0)
    return [
        {
            "stream": "transactions",
            "entity": f"c{i:07d}",
            "values": {
                "amount": round(rng.uniform(1, 500), 2),
                "log_amount": rng.uniform(0, 6),
                "age": rng.randint(18, 90),
                "hour": rng.randint(0, 23),
                "merchant_category": rng.choice(["grocery", "travel", "gaming"]),
            },
            "event_time": now - timedelta(seconds=rng.randint(0, 86400)),
            "updated_at": now,
        }
        for i in range(count)
    ]


class Load:
    """``concurrency`` threads, each with one keep-alive connection, posting lookups for ``seconds``."""

    def __init__(
        self,
        port: int,
        path: str,
        bodies: list[bytes],
        check: Callable[[bytes, int], bool],
        size: int,
        headers: dict[str, str],
    ) -> None:
        self.port, self.path, self.bodies, self.check, self.size = port, path, bodies, check, size
        self.headers = {"Content-Type": "application/json", **headers}

    def run(self, concurrency: int, seconds: float) -> dict[str, float]:
        times: list[list[float]] = [[] for _ in range(concurrency)]
        failed = [0] * concurrency
        deadline = time.perf_counter() + seconds

        def worker(index: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            bodies, n = self.bodies, len(self.bodies)
            i = index * 7919
            while time.perf_counter() < deadline:
                body = bodies[i % n]
                i += 1
                start = time.perf_counter()
                try:
                    conn.request("POST", self.path, body, self.headers)
                    response = conn.getresponse()
                    data = response.read()
                    ok = response.status == 200 and (i % CHECK_EVERY or self.check(data, self.size))
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                    ok = False
                times[index].append(time.perf_counter() - start)
                failed[index] += not ok
            conn.close()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        every = [t for per_thread in times for t in per_thread]
        figures = latency_ms(every)
        return {"rps": len(every) / elapsed, "p50": figures["p50"], "p99": figures["p99"], "failed": sum(failed)}


def measure(label: str, load: Load, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    out = {}
    for concurrency in args.concurrency:
        load.run(concurrency, min(1.0, args.seconds / 4))  # warm-up
        figures = load.run(concurrency, args.seconds)
        out[key(load.size, concurrency)] = figures
        print(
            f"  {label:<22} {load.size:>4} entities C={concurrency:<3} {figures['rps']:8.0f} lookups/s   "
            f"p50 {figures['p50']:6.2f} ms   p99 {figures['p99']:6.2f} ms   failed {figures['failed']:.0f}",
            flush=True,
        )
    return out


def batches(keys: list[str], size: int, count: int = 500) -> list[list[str]]:
    rng = random.Random(size)
    return [rng.sample(keys, size) for _ in range(count)]


# --- Feast -----------------------------------------------------------------------------------------------------


def feast_venv(state_dir: Path) -> Path:
    """The virtualenv with feast==FEAST_VERSION (made once, then reused): its bin folder."""
    venv = state_dir / f"feast-{FEAST_VERSION}"
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('feast'))"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == FEAST_VERSION:
        return venv / "bin"
    print(f"installing feast=={FEAST_VERSION} into {venv} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"feast=={FEAST_VERSION}"], check=True)
    return venv / "bin"


def bench_feast(rows: list[dict[str, Any]], keys: list[str], args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    bin_dir = feast_venv(args.state_dir)
    repo = bench_folder("driftloop-bench-feast-", keep=args.keep)
    (repo / "data").mkdir()
    (repo / "feature_store.yaml").write_text(
        "project: bench\nregistry: data/registry.db\nprovider: local\n"
        "online_store:\n  type: sqlite\n  path: data/online_store.db\nentity_key_serialization_version: 3\n"
    )
    (repo / "definitions.py").write_text(FEAST_DEFINITIONS)
    frame = pd.DataFrame(
        [{"customer_id": r["entity"], **r["values"], "event_time": r["event_time"]} for r in rows]
    ).astype({"age": "int64", "hour": "int64"})
    frame.to_parquet(repo / "data" / "rows.parquet")
    print(f"\n=== feast serve {FEAST_VERSION} (SQLite online store) in {repo} ===", flush=True)
    start = time.perf_counter()
    subprocess.run([str(bin_dir / "python"), "-c", FEAST_LOAD], cwd=repo, check=True, capture_output=True)
    print(f"  {len(rows)} entities applied and written to Feast's online store in {time.perf_counter() - start:.1f}s")
    port = free_port()
    cmd = [str(bin_dir / "feast"), "serve", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    proc = subprocess.Popen(cmd, cwd=repo, stdout=(repo / "serve.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: proc.poll() is None and http_ready(f"http://127.0.0.1:{port}/health"), 120, "feast serve")
        refs = [f"transactions:{name}" for name in FEATURES]
        out: dict[str, Any] = {}
        for size in SIZES:
            bodies = [
                json.dumps({"features": refs, "entities": {"customer_id": batch}}).encode()
                for batch in batches(keys, size)
            ]
            load = Load(port, "/get-online-features", bodies, _feast_answer_complete, size, {})
            out.update(measure("feast serve", load, args))
        return out
    finally:
        stop_pid(proc.pid)


def _feast_answer_complete(data: bytes, size: int) -> bool:
    results = json.loads(data)["results"]
    # results[0] is the entity key column; each feature's statuses say PRESENT for a value found.
    return len(results) == len(FEATURES) + 1 and all(
        len(r["values"]) == size and all(s == "PRESENT" for s in r["statuses"]) for r in results[1:]
    )


# --- driftloop -------------------------------------------------------------------------------------------------


def _driftloop_answer_complete(data: bytes, size: int) -> bool:
    body = json.loads(data)
    return not body["missing"] and len(body["values"]) == size


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


def bench_driftloop(
    kind: str, rows: list[dict[str, Any]], keys: list[str], args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any]]:
    tmp = bench_folder(f"driftloop-bench-online-{kind}-", keep=args.keep)
    ports = {"schemaregistry_port": free_port(), "features_port": free_port()}
    redis_pid = None
    # No Spark warm-up: nothing is materialized here, and a JVM starting beside the lookups would skew them.
    features: dict[str, Any] = {"online_store": kind}
    if kind == "redis":
        redis_pid, redis_url = start_redis(tmp)
        features["redis"] = {"url": redis_url}
    settings = own_stack_settings(tmp, ports, features=features, spark={"warm_at_start": False})
    pipeline = load_pipeline(REPO / "pipelines" / "transactions.yaml")
    stream = pipeline.stream.name
    details: dict[str, Any] = {}

    stack = stack_module.Stack(settings, on_progress=lambda line: print(f"  {line}", flush=True))
    print(f"\n=== driftloop, {kind} online store, in {tmp} ===", flush=True)
    try:
        stack.up(services=("features",))  # only the features service (besides the broker and the registry)
        engine = create_engine_for(settings.database_url)
        store = open_online_store(settings, engine)
        start = time.perf_counter()
        store.write(rows)
        details["write_ms"] = round((time.perf_counter() - start) * 1000)
        print(f"  {len(rows)} entities written to the {kind} store in {details['write_ms']} ms", flush=True)
        # POST routes need a token unless public: use the admin token `driftloop up` wrote (as serving does).
        headers = {"Authorization": f"Bearer {token_file(settings).read_text().strip()}"}
        out: dict[str, Any] = {}
        for size in SIZES:
            some = batches(keys, size)
            bodies = [json.dumps({"stream": stream, "entities": batch}).encode() for batch in some]
            load = Load(
                ports["features_port"], "/v1/features/online", bodies, _driftloop_answer_complete, size, headers
            )
            out.update(measure(f"driftloop ({kind})", load, args))
            direct = []
            for batch in some[:200]:
                start = time.perf_counter()
                store.read(stream, batch)
                direct.append(time.perf_counter() - start)
            details[f"direct_e{size}_p50_ms"] = round(latency_ms(direct)["p50"], 3)
            print(f"  store.read of {size} entities, no HTTP: p50 {details[f'direct_e{size}_p50_ms']:.3f} ms")
        if args.stream_records:
            bus = EventBus(settings, producer_name="bench")
            try:
                delays = stream_freshness(bus, store, pipeline, args.stream_records)
            finally:
                bus.close()
            details["stream_p50_ms"] = round(float(np.percentile(delays, 50) * 1000))
            print(
                f"  streaming worker, broker ack -> online: {len(delays)} records, p50 {details['stream_p50_ms']} ms, "
                f"max {max(delays) * 1000:.0f} ms"
            )
        engine.dispose()
        return out, details
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
    raise SystemExit(tidy(main()))
