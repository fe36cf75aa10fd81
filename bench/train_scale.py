"""Training wall time and peak memory at 10k / 100k / 1M rows (the demo pipeline's LightGBM, 120 rounds, 1 thread).

For each size the feature set is generated here (demo-like transactions) and written as Parquet to a temporary
local object store; then a fresh Python process runs the fit exactly as the Ray task does
(``driftloop.services.training.fit.fit_feature_set``: read, holdout split, fit, holdout metrics, plots, artifact),
so its peak RSS is the fit's alone. Printed per size: fit wall time, the process's peak RSS, rows/s, holdout AUC,
artifact size. Every child process is waited for; nothing stays running.

    .venv/bin/python bench/train_scale.py                  # about 2-4 minutes on 2 cores
    .venv/bin/python bench/train_scale.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from _common import add_keep_option, bench_folder, tidy

from driftloop.clients.objectstore import LocalObjectStore
from driftloop.contracts import layout
from driftloop.contracts.featuredefs import compute_features
from driftloop.contracts.pipeline import load_pipeline

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "pipelines" / "transactions.yaml"


def generate(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(4, 0.8, rows)
    category = rng.choice(["grocery", "travel", "electronics", "fashion", "gaming"], rows)
    hour = rng.integers(0, 24, rows)
    age = rng.integers(18, 80, rows)
    logit = -2 + 1.8 * (amount > 120) + 1.2 * (category == "electronics") + 1.0 * (hour < 6) - 0.5 * (age > 50)
    start = pd.Timestamp(datetime(2026, 1, 1, tzinfo=UTC))
    return pd.DataFrame(
        {
            "customer_id": np.char.add("c", (np.arange(rows) % 5000).astype(str)),
            "event_time": start + pd.to_timedelta(np.arange(rows) * 50, unit="ms"),
            "amount": amount.round(2),
            "age": age,
            "merchant_category": category,
            "hour": hour,
            "is_fraud": (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int),
        }
    )


def fit_one(home: Path, rows: int) -> None:
    """In the child process: fit the feature set of ``rows`` and print the figures as JSON."""
    from driftloop.contracts.settings import ObjectStoreSettings
    from driftloop.services.training.fit import FitJob, fit_feature_set

    pipeline = load_pipeline(PIPELINE)
    store = LocalObjectStore(home / "objects")
    prefix = layout.feature_set_prefix(pipeline.stream.name, rows)
    job = FitJob(
        f"bench-{rows}",
        pipeline,
        ObjectStoreSettings(type="local", path=home / "objects"),
        prefix,
        store.uri(prefix),
        f"{pipeline.stream.name}@v{rows}",
    )
    started = time.perf_counter()
    result = fit_feature_set(job)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {"rows": rows, "seconds": seconds, "peak_mb": peak_mb, "auc": result.metrics["roc_auc"]}
    print(json.dumps(figures | {"artifact_kb": len(result.artifact) / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    add_keep_option(parser)
    args = parser.parse_args()
    if args.one:
        fit_one(args.home, args.one)
        return
    home = bench_folder("driftloop-bench-train-", keep=args.keep)
    pipeline = load_pipeline(PIPELINE)
    store = LocalObjectStore(home / "objects")
    figures = []
    for rows in args.sizes:
        features = compute_features(generate(rows), pipeline)
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(features, preserve_index=False), sink)
        store.put_bytes(
            f"{layout.feature_set_prefix(pipeline.stream.name, rows)}part-0.parquet", sink.getvalue().to_pybytes()
        )
        del features, sink
        child = subprocess.run(
            [sys.executable, __file__, "--one", str(rows), "--home", str(home)],
            capture_output=True,
            text=True,
            timeout=1800,
            check=True,
        )
        figures.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(f"  done: {rows} rows", flush=True)
    params = pipeline.model.params
    print(f"\nLightGBM {params}, 1 thread, holdout {pipeline.model.holdout_fraction}, plots and artifact included")
    print(
        f"{'rows':>10} {'fit wall s':>11} {'peak RSS MiB':>13} {'rows/s':>10} {'holdout AUC':>12} {'artifact KiB':>13}"
    )
    for f in figures:
        print(
            f"{f['rows']:>10} {f['seconds']:>11.2f} {f['peak_mb']:>13.0f} {f['rows'] / f['seconds']:>10.0f} "
            f"{f['auc']:>12.4f} {f['artifact_kb']:>13.0f}"
        )


if __name__ == "__main__":
    raise SystemExit(tidy(main()))
