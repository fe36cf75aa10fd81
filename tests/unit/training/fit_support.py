"""Support for the training tests: the repository's root, the demo pipeline under test names, raw rows of the demo
stream and a feature set as the features service leaves it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from driftloop.clients.objectstore import ObjectStore
from driftloop.contracts import layout
from driftloop.contracts.featuredefs import compute_features
from driftloop.contracts.pipeline import PipelineConfig, parse_pipeline

REPO = Path(__file__).resolve().parents[3]


def pipeline(stream: str = "tx-unit", model: str = "fraud-unit") -> PipelineConfig:
    text = (REPO / "pipelines" / "transactions.yaml").read_text()
    return parse_pipeline(
        text.replace("name: transactions", f"name: {stream}").replace("name: fraud-detector", f"name: {model}")
    )


def raw_rows(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = datetime(2026, 2, 1, tzinfo=UTC)
    amount = rng.lognormal(4, 1, rows)
    category = rng.choice(["grocery", "travel", "electronics", "fashion", "gaming"], rows)
    hour = rng.integers(0, 24, rows)
    logit = -2 + 1.3 * (np.log1p(amount) - 4) + 1.5 * np.isin(category, ["electronics", "gaming"])
    return pd.DataFrame(
        {
            "customer_id": [f"c{i % 50}" for i in range(rows)],
            "event_time": [start + timedelta(minutes=i) for i in range(rows)],
            "amount": amount,
            "age": rng.integers(18, 90, rows).astype(float),
            "merchant_category": category,
            "hour": hour,
            "is_fraud": (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int),
        }
    )


def write_feature_set(store: ObjectStore, cfg: PipelineConfig, version: int, rows: int, manifest: bool = True) -> None:
    features = compute_features(raw_rows(rows, seed=version), cfg)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(features, preserve_index=False), sink)
    prefix = layout.feature_set_prefix(cfg.stream.name, version)
    store.put_bytes(f"{prefix}part-00000.parquet", sink.getvalue().to_pybytes())
    if manifest:
        store.put_bytes(layout.feature_set_manifest_key(cfg.stream.name, version), json.dumps({"rows": rows}).encode())
