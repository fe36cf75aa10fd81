"""Serving throughput and latency, and a hot swap under load.

Starts its own embedded broker, schema registry and ONE serving process (free ports, a temporary home, the demo
pipeline), and a bare FastAPI app returning a constant, run by uvicorn the same way. Small real LightGBM models
are written to the object store and promoted by publishing ``ModelPromoted`` (as the registry does).

1. One-row predictions: requests/s, p50 and p99 from ``CONCURRENCY`` client threads for ``SECONDS`` each,
   against serving and against the constant endpoint in the same run, and their ratio.
2. Hot swap under the same load: ``SWAPS`` promotions while requests run; failed requests (non-200 or transport
   errors), p99 overall, p99 and max of the requests around each swap (±1 s of its ServingSwitched).

Everything started is stopped by PID at the end.

    .venv/bin/python bench/serve.py            # about 2-3 minutes on 2 cores
    .venv/bin/python bench/serve.py --seconds 10 --concurrency 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import latency_ms, own_stack_settings

import driftloop.ops.stack as stack_module
from driftloop.clients.objectstore import open_object_store
from driftloop.contracts.events import new_event
from driftloop.contracts.payloads import ModelPromoted
from driftloop.contracts.pipeline import load_pipeline
from driftloop.contracts.settings import Settings
from driftloop.ops.procs import free_port, spawn, stop_pid, wait_until
from driftloop.runtime.bus import EventBus

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the small-model helpers the serving tests use

from model_factory import feature_frame, put_artifact, raw_transactions, train_artifact  # noqa: E402

CONSTANT_APP = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()
@app.post("/predict")
def predict(body: dict) -> dict:
    return {"predictions": [0.5]}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


class Load:
    """``concurrency`` threads posting one-row requests in a loop; each result is (start, seconds, ok)."""

    def __init__(self, url: str, body: dict[str, Any], concurrency: int) -> None:
        self.url = url
        self.body = body
        self.concurrency = concurrency
        self.results: list[tuple[float, float, bool]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)]

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.post(self.url, json=self.body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with self._lock:
                    self.results.append((started, time.perf_counter() - started, ok))

    def run_for(self, seconds: float) -> Load:
        self.start()
        time.sleep(seconds)
        return self.stop()

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> Load:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
        return self

    def figures(self) -> dict[str, float]:
        starts = [s for s, _, _ in self.results]
        latency = latency_ms([d for _, d, _ in self.results])
        span = max(s + d for s, d, _ in self.results) - min(starts)
        return {
            "requests": len(self.results),
            "failed": sum(1 for *_, ok in self.results if not ok),
            "rps": len(self.results) / span,
            "p50": latency["p50"],
            "p99": latency["p99"],
            "max": latency["max"],
        }


def promote(bus: EventBus, settings: Settings, model: str, version: int, artifact: Any) -> None:
    """What the registry does on a promotion: the artifact in the object store, then ModelPromoted."""
    uri, sha = put_artifact(open_object_store(settings), model, f"bench-run-{version}", artifact)
    promoted = ModelPromoted(
        model=model,
        version=version,
        alias="champion",
        previous_version=version - 1 if version > 1 else None,
        artifact_uri=uri,
        artifact_sha256=sha,
        dataset_version_id="bench@v1",
        feature_set_uri="file:///bench",
        reason="bench",
        gate_json="{}",
        moved_by="bench",
        rollback=False,
    )
    bus.publish(new_event(promoted, producer="bench"))


def served_version(url: str) -> int | None:
    try:
        response = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None
    return response.json()["version"] if response.status_code == 200 else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds of load per measurement")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads")
    parser.add_argument("--swaps", type=int, default=3, help="hot swaps under load")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="driftloop-bench-serve-"))
    ports = {"schemaregistry_port": free_port(), "serving_port": free_port()}
    settings = own_stack_settings(tmp, ports)
    pipeline = load_pipeline(REPO / "pipelines" / "transactions.yaml")
    model = pipeline.model.name
    features = feature_frame(pipeline, rows=3000)
    artifacts = [train_artifact(pipeline, features, rounds=rounds) for rounds in (60, 120)]
    row = raw_transactions(1, seed=7).drop(columns=[pipeline.stream.label])
    row[pipeline.stream.event_time] = row[pipeline.stream.event_time].astype(str)
    body = {"instances": row.to_dict(orient="records")}

    stack = stack_module.Stack(settings, on_progress=lambda line: print(f"  {line}", flush=True))
    constant_port = free_port()
    constant = None
    bus = None
    print(f"bench/serve.py: starting broker, schema registry and serving in {tmp} ...", flush=True)
    try:
        stack.up(services=("serving",))  # only serving (besides the broker and the registry)
        constant = spawn([sys.executable, "-c", CONSTANT_APP, str(constant_port)], tmp / "constant.out")
        serving = settings.services.url("serving")
        describe = f"{serving}/v1/models/{model}"
        bus = EventBus(settings, producer_name="bench")
        promote(bus, settings, model, 1, artifacts[0])
        wait_until(lambda: served_version(describe) == 1, 120, "serving to load v1")
        wait_until(lambda: _up(f"http://127.0.0.1:{constant_port}/docs"), 60, "the constant app")

        predict_url = f"{serving}/v1/models/{model}/predict"
        constant_url = f"http://127.0.0.1:{constant_port}/predict"
        Load(predict_url, body, args.concurrency).run_for(3)  # warm up both
        Load(constant_url, body, args.concurrency).run_for(3)
        served = Load(predict_url, body, args.concurrency).run_for(args.seconds).figures()
        bare = Load(constant_url, body, args.concurrency).run_for(args.seconds).figures()

        print(f"\none-row predictions, {args.concurrency} client threads, {args.seconds:g}s each (same machine):")
        print(f"  {'endpoint':<34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}")
        for name, f in (("serving /v1 predict (LightGBM)", served), ("bare FastAPI constant", bare)):
            print(f"  {name:<34} {f['rps']:8.1f} {f['p50']:8.2f} {f['p99']:8.2f} {f['failed']:7d}")
        print(
            f"  ratio serving/constant: throughput {served['rps'] / bare['rps']:.2f}x, "
            f"p50 {served['p50'] / bare['p50']:.1f}x, p99 {served['p99'] / bare['p99']:.1f}x"
        )

        # Hot swaps under the same load.
        load = Load(predict_url, body, args.concurrency).start()
        swap_times: list[float] = []
        try:
            time.sleep(3)
            for i in range(args.swaps):
                version = 2 + i
                promote(bus, settings, model, version, artifacts[(i + 1) % 2])
                wait_until(lambda v=version: served_version(describe) == v, 120, f"the swap to v{version}")
                swap_times.append(time.perf_counter())
                time.sleep(3)
        finally:
            load.stop()
        overall = load.figures()
        around = [d * 1000 for s, d, _ in load.results if any(abs(s - t) <= 1.0 for t in swap_times)]
        print(f"\nhot swap under load: {args.swaps} swaps, {overall['requests']} requests")
        print(f"  failed requests: {overall['failed']}")
        print(f"  p50 {overall['p50']:.2f} ms, p99 {overall['p99']:.2f} ms, max {overall['max']:.2f} ms (whole run)")
        if around:
            print(
                f"  around the swaps (±1 s, {len(around)} requests): p99 {float(np.percentile(around, 99)):.2f} ms, "
                f"max {max(around):.2f} ms, median {statistics.median(around):.2f} ms"
            )
        return 0 if overall["failed"] == 0 else 1
    finally:
        if bus is not None:
            bus.close()
        if constant is not None:
            stop_pid(constant.pid, timeout=10.0)
        stack.down()


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
