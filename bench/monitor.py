"""The monitor's handling cost per event: predictions (features + durable window row), window closes (tests on
the stored rows), feedback joins and performance windows; and what a restart costs (rebuilding the watch).

Runs the monitor's handlers in this process on a temporary SQLite database and local object store (no broker:
this measures the monitor, not Kafka), with the demo pipeline (count windows of 400, 5 features), ``--predictions``
logged predictions (half from the reference distribution, half shifted) and one feedback per prediction. Prints
p50 / p99 / mean milliseconds per kind of event and events per second. Nothing is left running.

    .venv/bin/python bench/monitor.py                      # about a minute on 2 cores
    .venv/bin/python bench/monitor.py --predictions 4000 --hop 100
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from _common import latency_ms

from driftloop.clients.db import create_engine_for, migrate, session_factory
from driftloop.clients.objectstore import LocalObjectStore
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.featuredefs import compute_features
from driftloop.contracts.layout import feature_set_prefix
from driftloop.contracts.payloads import FeedbackReceived, ModelPromoted, PredictionLogged
from driftloop.contracts.pipeline import PerformanceSpec, load_pipeline
from driftloop.services.monitor.handlers import MonitorHandlers, feature_row

PIPELINE = load_pipeline(Path(__file__).resolve().parents[1] / "pipelines" / "transactions.yaml")
CATEGORIES = ["grocery", "travel", "electronics", "fashion", "gaming"]


def raw_inputs(n: int, rng: np.random.Generator, amount_scale: float = 1.0) -> list[dict[str, Any]]:
    return [
        {
            "customer_id": f"c{rng.integers(0, 1000)}",
            "amount": float(rng.lognormal(3.5, 1.0) * amount_scale),
            "age": int(rng.integers(18, 90)),
            "hour": int(rng.integers(0, 24)),
            "merchant_category": str(rng.choice(CATEGORIES)),
        }
        for _ in range(n)
    ]


def summary(name: str, seconds: list[float]) -> None:
    ms = latency_ms(seconds)
    print(
        f"{name:<28} n={len(seconds):>5}  p50={ms['p50']:7.2f} ms  p99={ms['p99']:7.2f} ms  "
        f"mean={ms['mean']:7.2f} ms  ({1000 / ms['mean']:6.1f}/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=2000)
    parser.add_argument("--hop", type=int, default=0, help="hopping windows: predictions between starts (0: tumbling)")
    args = parser.parse_args()

    monitor = PIPELINE.monitor.model_copy(
        update={
            "hop": float(args.hop) if args.hop else None,
            "performance": PerformanceSpec(metric="roc_auc", window_size=200, threshold=0.6),
        }
    )
    pipeline = PIPELINE.model_copy(update={"monitor": monitor})
    model = pipeline.model.name
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        url = f"sqlite:///{tmp}/monitor.sqlite"
        migrate(url)
        store = LocalObjectStore(Path(tmp) / "objects")
        reference = compute_features(pd.DataFrame(raw_inputs(3000, rng)), pipeline, keep_keys=True)
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(reference, preserve_index=False), buffer)
        prefix = feature_set_prefix(pipeline.stream.name, 1)
        store.put_bytes(prefix + "part-00000.parquet", buffer.getvalue())
        engine = create_engine_for(url)
        published: list[Event] = []
        handlers = MonitorHandlers({model: pipeline}, session_factory(engine), store, published.append)
        promoted = ModelPromoted(
            model=model,
            version=1,
            alias="champion",
            previous_version=None,
            artifact_uri="file:///x/model.zip",
            artifact_sha256="0" * 64,
            dataset_version_id=f"{pipeline.stream.name}@v1",
            feature_set_uri=store.uri(prefix),
            reason="bench",
            gate_json="{}",
        )
        handlers.on_model_promoted(new_event(promoted, producer="bench"))

        half = args.predictions // 2
        inputs = raw_inputs(half, rng) + raw_inputs(args.predictions - half, rng, amount_scale=1.8)
        plain: list[float] = []
        closing: list[float] = []
        step = int(monitor.window_hop)
        for i, row in enumerate(inputs):
            payload = PredictionLogged(
                request_id=f"r{i}",
                model=model,
                version=1,
                index=0,
                inputs=row,
                prediction=float(rng.random()),
                entity=row["customer_id"],
            )
            event = new_event(payload, producer="bench")
            start = time.perf_counter()
            handlers.on_prediction_logged(event)
            elapsed = time.perf_counter() - start
            closes = i + 1 >= monitor.window_size and (i + 1 - monitor.window_size) % step == 0
            (closing if closes else plain).append(elapsed)

        feature_cost: list[float] = []
        for row in inputs[:200]:
            start = time.perf_counter()
            feature_row(row, pipeline)
            feature_cost.append(time.perf_counter() - start)

        feedback: list[float] = []
        for i in range(args.predictions):
            event = new_event(
                FeedbackReceived(request_id=f"r{i}", model=model, index=0, actual=float(rng.random() < 0.3)),
                producer="bench",
            )
            start = time.perf_counter()
            handlers.on_feedback_received(event)
            feedback.append(time.perf_counter() - start)

        start = time.perf_counter()
        restarted = MonitorHandlers({model: pipeline}, session_factory(engine), store, [].append)
        status = restarted.status(model)
        restart = time.perf_counter() - start
        engine.dispose()

    print(
        f"monitor handlers, demo pipeline: {args.predictions} predictions, count windows of {monitor.window_size}"
        f" every {step}, SQLite"
    )
    summary("prediction (window open)", plain)
    summary("prediction closing a window", closing)
    summary("  of which feature_row", feature_cost)
    summary("feedback (join + perf.)", feedback)
    print(
        f"{'restart (reload watch)':<28} {restart * 1000:7.1f} ms  -> {status['predictions_stored']} stored, "
        f"next window {status['window_index']}, fill {status['window_fill']}"
    )
    print(f"events published: {sorted({e.type for e in published})} x{len(published)}")


if __name__ == "__main__":
    main()
