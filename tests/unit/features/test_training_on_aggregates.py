"""Training reads a training set with aggregate features in the usual format, and the model it makes scores
rows whose aggregates come from the online store (by name) or are missing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from driftloop.clients.objectstore import LocalObjectStore
from driftloop.contracts import layout
from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.featuredefs import compute_features, features_from_instances
from driftloop.contracts.pipeline import parse_pipeline
from driftloop.contracts.settings import ObjectStoreSettings
from driftloop.services.training.fit import FitJob, fit_feature_set

REPO = Path(__file__).resolve().parents[3]
AGGREGATES = (
    "  - {name: amount_mean_1d, aggregate: mean, source: amount, window: 1d}\n"
    "  - {name: tx_count_1h, aggregate: count, window: 1h}\n"
)


def raw_rows(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(4, 1, rows)
    category = rng.choice(["grocery", "travel", "electronics", "fashion", "gaming"], rows)
    logit = -2 + 1.3 * (np.log1p(amount) - 4) + 1.5 * np.isin(category, ["electronics", "gaming"])
    return pd.DataFrame(
        {
            "customer_id": [f"c{i % 50}" for i in range(rows)],
            "event_time": [datetime(2026, 2, 1, tzinfo=UTC) + timedelta(minutes=i) for i in range(rows)],
            "amount": amount,
            "age": rng.integers(18, 90, rows).astype(float),
            "merchant_category": category,
            "hour": rng.integers(0, 24, rows),
            "is_fraud": (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int),
        }
    )


def test_fit_on_a_training_set_with_aggregates(tmp_path: Path) -> None:
    anchor = "  - {name: merchant_category, kind: categorical}\n"
    text = (REPO / "pipelines" / "transactions.yaml").read_text().replace(anchor, anchor + AGGREGATES)
    cfg = parse_pipeline(text.replace("name: transactions", "name: tx-agg"))
    raw = raw_rows(1200, seed=4)
    training_set = compute_features(raw, cfg)
    assert training_set["amount_mean_1d"].isna().all()  # filled by the point-in-time join in Spark
    rng = np.random.default_rng(0)
    training_set["amount_mean_1d"] = np.where(rng.random(len(raw)) < 0.1, np.nan, raw["amount"] * 0.9)
    training_set["tx_count_1h"] = rng.integers(0, 5, len(raw)).astype(float)
    store = LocalObjectStore(tmp_path)
    prefix = layout.feature_set_prefix("tx-agg", 1)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(training_set, preserve_index=False), sink)
    store.put_bytes(f"{prefix}part-00000.parquet", sink.getvalue().to_pybytes())
    store.put_bytes(layout.feature_set_manifest_key("tx-agg", 1), json.dumps({"rows": len(raw)}).encode())

    job = FitJob(
        run_id="run-agg",
        pipeline=cfg,
        object_store=ObjectStoreSettings(type="local", path=tmp_path),
        feature_set_prefix=prefix,
        feature_set_uri=store.uri(prefix),
        dataset_version_id="tx-agg@v1",
    )
    result = fit_feature_set(job)
    artifact = ModelArtifact.from_bytes(result.artifact)
    assert artifact.feature_names == cfg.feature_names and "tx_count_1h" in artifact.feature_names
    online = {"amount": 50.0, "age": 30.0, "hour": 4, "merchant_category": "travel", "amount_mean_1d": 45.0}
    rows = features_from_instances([{**online, "tx_count_1h": 2.0}, online], cfg)
    scores = artifact.predict(rows)
    assert len(scores) == 2 and np.isfinite(scores).all()
