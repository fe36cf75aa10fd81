"""Offline features (the per-batch function Spark applies) equal the features serving computes for the same rows,
and the online store upserts move entities forward in event time only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.clients.db import migrate
from driftloop.clients.db.engine import create_engine_for
from driftloop.contracts.featuredefs import features_from_instances
from driftloop.contracts.pipeline import load_pipeline
from driftloop.services.features.materialize import feature_batch, feature_columns, online_rows
from driftloop.services.features.onlinestore import lookup_online, upsert_online

PIPELINE = load_pipeline(Path(__file__).resolve().parents[3] / "pipelines" / "transactions.yaml")


def raw_rows(n: int, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    frame = pd.DataFrame(
        {
            "customer_id": [f"c{i % 17}" for i in range(n)],
            "event_time": [start + timedelta(minutes=int(m)) for m in rng.integers(0, 10_000, n)],
            "amount": rng.gamma(2.0, 40.0, n).round(2),
            "age": rng.integers(18, 90, n).astype("float64"),
            "merchant_category": rng.choice(["grocery", "travel", "electronics", "fashion", "gaming"], n),
            "hour": rng.integers(0, 24, n),
            "is_fraud": rng.integers(0, 2, n),
        }
    )
    # Missing values and an edge value: offline and online must treat them alike.
    frame.loc[3, "age"] = np.nan
    frame.loc[5, "merchant_category"] = None
    frame.loc[8, "amount"] = 0.0
    return frame


def test_offline_batch_equals_serving_features() -> None:
    raw = raw_rows(200)
    offline = feature_batch(raw, PIPELINE)
    assert list(offline.columns) == feature_columns(PIPELINE)

    instances = [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        for row in raw.drop(columns=["is_fraud"]).to_dict(orient="records")
    ]
    online = features_from_instances(instances, PIPELINE)

    names = PIPELINE.feature_names
    pd.testing.assert_frame_equal(
        offline[names].reset_index(drop=True), online[names].reset_index(drop=True), check_dtype=False
    )
    assert offline["log_amount"].iloc[8] == 0.0
    assert np.isnan(offline["age"].iloc[3])
    assert offline["merchant_category"].iloc[5] is None
    assert offline["is_fraud"].dtype == "Int64"


def test_offline_batch_turns_infinities_into_missing_like_serving() -> None:
    raw = raw_rows(10)
    raw.loc[0, "amount"] = -1.0  # log1p(-1) = -inf
    offline = feature_batch(raw, PIPELINE)
    assert np.isnan(offline["log_amount"].iloc[0])


def test_online_rows_and_upsert_keep_the_newest_value(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    engine = create_engine_for(url)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    newer = pd.DataFrame(
        {
            "customer_id": ["a", "b"],
            "event_time": [t0 + timedelta(hours=2), t0],
            "amount": [10.0, 20.0],
            "log_amount": [np.log1p(10.0), np.log1p(20.0)],
            "age": [30.0, np.nan],
            "hour": [1.0, 2.0],
            "merchant_category": ["travel", None],
            "is_fraud": [0, 1],
        }
    )
    assert upsert_online(engine, online_rows(newer, PIPELINE)) == 2

    older = newer.copy()
    older["event_time"] = [t0 + timedelta(hours=1), t0 + timedelta(hours=1)]
    older["amount"] = [99.0, 99.0]
    upsert_online(engine, online_rows(older, PIPELINE))

    found = lookup_online(engine, PIPELINE.stream.name, ["a", "b", "nobody"])
    assert set(found) == {"a", "b"}
    assert found["a"]["amount"] == 10.0  # the older replay did not overwrite a
    assert found["b"]["amount"] == 99.0  # b moved forward in time
    assert found["b"]["age"] is None and found["b"]["merchant_category"] is None  # missing values stay missing
    assert found["a"]["event_time"] == (t0 + timedelta(hours=2)).isoformat()
    assert "is_fraud" not in found["a"]
