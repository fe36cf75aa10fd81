"""Serving throughput and latency against its peers, in one run, on the same machine, model and rows.

Servers, each on a free port:

- ``floor``: a bare FastAPI endpoint returning a constant, run by uvicorn as installed (what any server over
  FastAPI/uvicorn can at best do here);
- ``mlflow``: ``mlflow models serve`` (default configuration: one worker), installed by this script into a
  virtualenv of its own under the state folder (``--state``, default ``~/.cache/driftloop-bench``), pinned
  (``MLFLOW_VERSION``), never a dependency of driftloop;
- ``driftloop``: the serving service (with an embedded broker and schema registry, a temporary home), its
  ``/v1/models/{m}/predict`` and, at one row, the Open Inference Protocol's ``/v2/models/{m}/infer``.

The model: a LightGBM binary classifier with 8 numeric features trained on the same 10,000 synthetic rows, saved
once; driftloop serves it as a promoted artifact, MLflow as the same booster saved with ``mlflow.lightgbm`` in its
own virtualenv. Requests carry 1, 10 and 1000 rows (``--rows``) as records (driftloop ``instances``, MLflow
``dataframe_records``), from C=1 and C=8 client threads (``--concurrency``) on keep-alive connections, for
``--seconds`` each. Then hot swaps under load (``--swaps``): failed requests must be zero.

Prints a table, the ratios ``driftloop/mlflow`` and ``driftloop/floor``; ``--json`` prints each measurement and a
summary as JSON lines: ``{"bench": "serve", "ratio_vs_mlflow_c1", "ratio_vs_mlflow_c8", "ratio_vs_floor_c1",
...}``. Everything started is stopped by PID at the end.

    .venv/bin/python bench/serve.py --seconds 5          # about 3 minutes on 2 cores (first run: + the venv)
    .venv/bin/python bench/serve.py --seconds 5 --json --workers 2
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import lightgbm as lgb
import numpy as np
import pandas as pd
from _common import add_keep_option, bench_folder, latency_ms, tidy

import driftloop.ops.stack as stack_module
from driftloop.clients.objectstore import open_object_store
from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.events import new_event
from driftloop.contracts.payloads import ModelPromoted
from driftloop.contracts.settings import Settings
from driftloop.ops.procs import free_port, spawn, stop_pid, wait_until
from driftloop.runtime.bus import EventBus

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the artifact helper the serving tests use

from model_factory import put_artifact  # noqa: E402

MLFLOW_VERSION = "3.17.2"
LIGHTGBM_VERSION = lgb.__version__  # the mlflow venv gets the booster's own LightGBM
MODEL = "bench-serve"
FEATURES = [f"f{i}" for i in range(8)]
TRAIN_ROWS = 10_000

PIPELINE = f"""
stream:
  name: bench-serve
  fields:
    - {{name: id, type: string}}
    - {{name: ts, type: timestamp}}
{chr(10).join(f"    - {{name: {f}, type: double, nullable: false}}" for f in FEATURES)}
    - {{name: y, type: int}}
  entity_key: id
  event_time: ts
  label: y
features:
{chr(10).join(f"  - {{name: {f}}}" for f in FEATURES)}
model:
  name: {MODEL}
  family: lightgbm
  task: classification
"""

CONSTANT_APP = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()
@app.post("/predict")
async def predict(body: dict) -> dict:
    return {"predictions": [0.5]}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""

# Run in the mlflow virtualenv: the same booster, saved as an MLflow model with mlflow.lightgbm.
MLFLOW_SAVE = """
import sys
import lightgbm as lgb, mlflow, numpy as np, pandas as pd
from mlflow.models import infer_signature
booster = lgb.Booster(model_file=sys.argv[1])
x = pd.DataFrame(np.zeros((2, 8)), columns=[f"f{i}" for i in range(8)])
mlflow.lightgbm.save_model(booster, sys.argv[2], signature=infer_signature(x, booster.predict(x)))
"""


def training_rows(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.normal(size=(TRAIN_ROWS, len(FEATURES))), columns=FEATURES)
    logit = x["f0"] * 1.5 - x["f1"] + 0.5 * x["f2"] * x["f3"] + np.sin(x["f4"])
    y = (rng.random(TRAIN_ROWS) < 1 / (1 + np.exp(-logit))).astype(int).to_numpy()
    return x, y


def train() -> ModelArtifact:
    x, y = training_rows()
    params = {"objective": "binary", "num_leaves": 31, "learning_rate": 0.1, "verbose": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=100)
    return ModelArtifact(family="lightgbm", task="classification", feature_names=FEATURES, categories={}, model=booster)


def request_rows(n: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(100 + n)
    return [dict(zip(FEATURES, map(float, row), strict=True)) for row in rng.normal(size=(n, len(FEATURES)))]


def oip_body(rows: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": f, "datatype": "FP64", "shape": [len(rows)], "data": [r[f] for r in rows]} for f in FEATURES
        ]
    }


# --- load ------------------------------------------------------------------------------------------------------


class Load:
    """``concurrency`` threads, each on one keep-alive connection (http.client: a light client, so that the
    generator costs less than the servers it measures), posting ``body`` in a loop."""

    def __init__(self, port: int, path: str, body: dict[str, Any], concurrency: int) -> None:
        self.port, self.path, self.concurrency = port, path, concurrency
        self.body = json.dumps(body).encode()
        self.results: list[tuple[float, float, bool]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)]

    def _run(self) -> None:
        headers = {"Content-Type": "application/json"}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        mine: list[tuple[float, float, bool]] = []
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                conn.request("POST", self.path, self.body, headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            mine.append((started, time.perf_counter() - started, ok))
        conn.close()
        with self._lock:
            self.results.extend(mine)

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> Load:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
        return self

    def run_for(self, seconds: float) -> Load:
        self.start()
        time.sleep(seconds)
        return self.stop()

    def figures(self) -> dict[str, float]:
        if not self.results:
            return {"requests": 0, "failed": 0, "rps": 0.0, "p50": float("nan"), "p99": float("nan")}
        latency = latency_ms([d for _, d, _ in self.results])
        span = max(s + d for s, d, _ in self.results) - min(s for s, _, _ in self.results)
        return {
            "requests": len(self.results),
            "failed": sum(1 for *_, ok in self.results if not ok),
            "rps": len(self.results) / span,
            "p50": latency["p50"],
            "p99": latency["p99"],
            "max": latency["max"],
        }


# --- the servers -----------------------------------------------------------------------------------------------


def mlflow_python(state: Path) -> Path:
    """The pinned mlflow virtualenv's python (created on the first run)."""
    venv = state / f"mlflow-{MLFLOW_VERSION}"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if not marker.exists():
        print(f"  installing mlflow=={MLFLOW_VERSION} into {venv} (first run only) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"mlflow=={MLFLOW_VERSION}", f"lightgbm=={LIGHTGBM_VERSION}"],
            check=True,
        )
        marker.write_text(f"mlflow=={MLFLOW_VERSION}\n")
    return python


def promote(bus: EventBus, settings: Settings, version: int, artifact: ModelArtifact) -> None:
    """What the registry does on a promotion: the artifact in the object store, then ModelPromoted."""
    uri, sha = put_artifact(open_object_store(settings), MODEL, f"bench-run-{version}", artifact)
    promoted = ModelPromoted(
        model=MODEL,
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


def answers(port: int, path: str, body: dict[str, Any]) -> bool:
    try:
        return httpx.post(f"http://127.0.0.1:{port}{path}", json=body, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


# --- main --------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of load per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="client threads")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 10, 1000], help="rows per request")
    parser.add_argument("--swaps", type=int, default=2, help="hot swaps under load (C=8, one row)")
    parser.add_argument("--workers", type=int, default=None, help="serving.workers (default: the setting's)")
    parser.add_argument("--state", type=Path, default=Path.home() / ".cache" / "driftloop-bench")
    parser.add_argument("--no-mlflow", action="store_true", help="skip mlflow (no ratio against it)")
    parser.add_argument("--json", action="store_true", help="JSON lines: each measurement and a summary")
    add_keep_option(parser)
    args = parser.parse_args()

    tmp = bench_folder("driftloop-bench-serve-", keep=args.keep)
    pipelines = tmp / "pipelines"
    pipelines.mkdir()
    (pipelines / f"{MODEL}.yaml").write_text(PIPELINE)
    ports = {"schemaregistry_port": free_port(), "serving_port": free_port()}
    settings = Settings(
        home=tmp / "home",
        pipelines_dir=pipelines,
        kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}", "session_timeout_ms": 2000},
        schema_registry={"url": f"http://127.0.0.1:{ports['schemaregistry_port']}"},
        services=ports,
        # No registry in this bench: serving takes the promotions from the bus as they come.
        serving={"verify_with_registry": False} | ({} if args.workers is None else {"workers": args.workers}),
    )
    artifact = train()
    booster_file = tmp / "model.txt"
    booster_file.write_text(artifact.model.model_to_string())
    second = train()  # the same model again (a new version) for the hot swaps

    stack = stack_module.Stack(settings, on_progress=lambda line: print(f"  {line}", flush=True))
    started: list[int] = []
    bus = None
    print(f"bench/serve.py: floor, mlflow and driftloop serving in {tmp} ...", flush=True)
    try:
        floor_port = free_port()
        started.append(spawn([sys.executable, "-c", CONSTANT_APP, str(floor_port)], tmp / "floor.out").pid)
        mlflow_port = None
        if not args.no_mlflow:
            python = mlflow_python(args.state)
            subprocess.run([str(python), "-c", MLFLOW_SAVE, str(booster_file), str(tmp / "mlflow-model")], check=True)
            mlflow_port = free_port()
            mlflow_cmd = [str(python.parent / "mlflow"), "models", "serve", "-m", str(tmp / "mlflow-model")]
            mlflow_cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(mlflow_port)]
            # mlflow starts uvicorn by name: its virtualenv's bin first on the PATH.
            path = f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"
            started.append(spawn(mlflow_cmd, tmp / "mlflow.out", {"PATH": path}).pid)
        stack.up(services=("serving",))
        bus = EventBus(settings, producer_name="bench")
        promote(bus, settings, 1, artifact)
        serving_port = settings.services.port("serving")
        describe = f"{settings.services.url('serving')}/v1/models/{MODEL}"
        wait_until(lambda: served_version(describe) == 1, 120, "serving to load v1")
        one = request_rows(1)
        wait_until(lambda: answers(floor_port, "/predict", {"instances": one}), 60, "the floor app")
        if mlflow_port is not None:
            wait_until(
                lambda: answers(mlflow_port, "/invocations", {"dataframe_records": one}), 120, "mlflow models serve"
            )

        targets: list[tuple[str, int, str, Any]] = [("floor", floor_port, "/predict", lambda r: {"instances": r})]
        if mlflow_port is not None:
            targets.append(("mlflow", mlflow_port, "/invocations", lambda r: {"dataframe_records": r}))
        targets.append(("driftloop", serving_port, f"/v1/models/{MODEL}/predict", lambda r: {"instances": r}))
        targets.append(("driftloop-oip", serving_port, f"/v2/models/{MODEL}/infer", oip_body))

        results: list[dict[str, Any]] = []
        for name, port, path, make_body in targets:
            for rows in args.rows if name in ("mlflow", "driftloop") else [1]:
                body = make_body(request_rows(rows))
                Load(port, path, body, max(args.concurrency)).run_for(1.0)  # warm up
                for concurrency in args.concurrency:
                    if name.startswith("driftloop"):  # the previous load's rows logged first: a clean start
                        wait_until(lambda: queued_rows(settings.services.url("serving")) == 0, 120, "the log")
                    figures = Load(port, path, body, concurrency).run_for(args.seconds).figures()
                    results.append({"server": name, "rows": rows, "concurrency": concurrency, **figures})
                    print(
                        f"  {name:<14} rows={rows:<5} C={concurrency:<2} {figures['rps']:8.1f} req/s  "
                        f"p50 {figures['p50']:7.2f} ms  p99 {figures['p99']:7.2f} ms  failed {figures['failed']}",
                        flush=True,
                    )

        swaps = hot_swaps(bus, settings, serving_port, describe, [second, artifact], args.swaps)
        summary = summarize(results, args, swaps)
        summary["rows_not_logged"] = not_logged(settings.services.url("serving"))
        print_table(results, summary)
        if args.json:
            for r in results:
                print(json.dumps({"bench": "serve", "measurement": r}))
            print(json.dumps(summary))
        failed = sum(r["failed"] for r in results if r["server"].startswith("driftloop")) + swaps["failed"]
        return 0 if failed == 0 else 1
    finally:
        if bus is not None:
            bus.close()
        for pid in started:
            stop_pid(pid, timeout=10.0)
        stack.down()


def hot_swaps(
    bus: EventBus, settings: Settings, port: int, describe: str, artifacts: list[ModelArtifact], swaps: int
) -> dict[str, Any]:
    """``swaps`` promotions while 8 threads post one-row requests: failed requests, p99."""
    load = Load(port, f"/v1/models/{MODEL}/predict", {"instances": request_rows(1)}, 8).start()
    try:
        time.sleep(1.0)
        for i in range(swaps):
            version = 2 + i
            promote(bus, settings, version, artifacts[i % len(artifacts)])
            wait_until(lambda v=version: served_version(describe) == v, 120, f"the swap to v{version}")
            time.sleep(1.0)
    finally:
        load.stop()
    figures = load.figures()
    print(f"\nhot swap under load: {swaps} swaps, {figures['requests']} requests, failed {figures['failed']}, "
          f"p99 {figures['p99']:.2f} ms, max {figures['max']:.2f} ms")  # fmt: skip
    return {"swaps": swaps, **figures}


def queued_rows(url: str) -> float:
    """Answered rows serving has yet to log (they cost CPU while they drain)."""
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("driftloop_serving_prediction_log_queued_rows "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def not_logged(url: str) -> float:
    """Answered rows that serving could not log (its log queue was full): they must be visible, and are."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("driftloop_serving_prediction_log_failures_total{")
    ]
    return sum(values)


def _find(results: list[dict[str, Any]], server: str, rows: int, concurrency: int) -> dict[str, Any] | None:
    return next((r for r in results if (r["server"], r["rows"], r["concurrency"]) == (server, rows, concurrency)), None)


def summarize(results: list[dict[str, Any]], args: argparse.Namespace, swaps: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {"bench": "serve", "seconds": args.seconds, "workers": args.workers}
    for c in args.concurrency:
        ours = _find(results, "driftloop", 1, c)
        for peer, key in (("mlflow", "mlflow"), ("floor", "floor")):
            theirs = _find(results, peer, 1, c)
            summary[f"ratio_vs_{key}_c{c}"] = (
                round(ours["rps"] / theirs["rps"], 3) if ours and theirs and theirs["rps"] else None
            )
        oip = _find(results, "driftloop-oip", 1, c)
        mlflow = _find(results, "mlflow", 1, c)
        summary[f"oip_ratio_vs_mlflow_c{c}"] = round(oip["rps"] / mlflow["rps"], 3) if oip and mlflow else None
        summary[f"driftloop_p99_ms_c{c}"] = round(ours["p99"], 2) if ours else None
        summary[f"mlflow_p99_ms_c{c}"] = round(mlflow["p99"], 2) if mlflow else None
    for rows in args.rows:
        for c in args.concurrency:
            ours, mlflow = _find(results, "driftloop", rows, c), _find(results, "mlflow", rows, c)
            if ours and mlflow and rows != 1:
                summary[f"ratio_vs_mlflow_rows{rows}_c{c}"] = round(ours["rps"] / mlflow["rps"], 3)
    summary["failed"] = sum(r["failed"] for r in results if r["server"].startswith("driftloop"))
    summary["hot_swap_failed"] = swaps["failed"]
    return summary


def print_table(results: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    print(f"\n  {'server':<14} {'rows':>5} {'C':>3} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}")
    for r in results:
        print(
            f"  {r['server']:<14} {r['rows']:>5} {r['concurrency']:>3} {r['rps']:9.1f} {r['p50']:8.2f} "
            f"{r['p99']:8.2f} {r['failed']:>7}"
        )
    ratios = {k: v for k, v in summary.items() if k.startswith(("ratio", "oip_ratio"))}
    print("\n  " + "  ".join(f"{k}={v}" for k, v in ratios.items()))
    print(f"  answered rows serving could not log (queue full, counted on /metrics): {summary['rows_not_logged']:.0f}")


if __name__ == "__main__":
    raise SystemExit(tidy(main()))
