"""Support for the training service's integration tests: a small feature set as the features service leaves it,
a manual TrainingRequested
and the wait for a request's run."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from driftloop.clients.db.models import Run
from driftloop.clients.objectstore import ObjectStore
from driftloop.contracts import layout
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.featuredefs import compute_features
from driftloop.contracts.payloads import TrainingRequested
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.ops.procs import wait_until
from driftloop.runtime.service import Runtime


def write_feature_set(store: ObjectStore, pipeline: PipelineConfig, version: int, rows: int) -> None:
    """A small feature set as the features service leaves it: Parquet files, then the manifest."""
    rng = np.random.default_rng(version)
    start = datetime(2026, 4, 1, tzinfo=UTC)
    amount = rng.lognormal(4, 1, rows)
    category = rng.choice(["grocery", "travel", "electronics", "fashion", "gaming"], rows)
    logit = -2 + 1.3 * (np.log1p(amount) - 4) + 1.5 * np.isin(category, ["electronics", "gaming"])
    raw = pd.DataFrame(
        {
            "customer_id": [f"c{i % 60}" for i in range(rows)],
            "event_time": [start + timedelta(minutes=i) for i in range(rows)],
            "amount": amount,
            "age": rng.integers(18, 90, rows).astype(float),
            "merchant_category": category,
            "hour": rng.integers(0, 24, rows),
            "is_fraud": (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(compute_features(raw, pipeline), preserve_index=False), sink)
    stream = pipeline.stream.name
    store.put_bytes(f"{layout.feature_set_prefix(stream, version)}part-00000.parquet", sink.getvalue().to_pybytes())
    store.put_bytes(layout.feature_set_manifest_key(stream, version), json.dumps({"row_count": rows}).encode())


def request_event(model: str, request_id: str, dataset_version_id: str | None) -> Event:
    return new_event(
        TrainingRequested(
            request_id=request_id,
            model=model,
            trigger="manual",
            reason="integration test",
            dataset_version_id=dataset_version_id,
        ),
        producer="test",
    )


def wait_for_run(runtime: Runtime, request_id: str, states: tuple[str, ...] = ("completed", "failed")) -> Run:
    def finished() -> bool:
        with runtime.Session() as session:
            run = session.scalar(sa.select(Run).where(Run.request_id == request_id))
        return run is not None and run.state in states

    wait_until(finished, 300, f"the run of request {request_id}")
    with runtime.Session() as session:
        return session.scalar(sa.select(Run).where(Run.request_id == request_id))
