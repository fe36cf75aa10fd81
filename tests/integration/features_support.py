"""Support for the features service's integration tests: raw rows of the demo stream and a dataset version as
ingestion leaves it, with its DatasetVersionCreated."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from driftloop.clients.objectstore import ObjectStore
from driftloop.contracts import layout
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import DatasetVersionCreated


def raw_rows(rows: int, entities: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    frame = pd.DataFrame(
        {
            "customer_id": [f"c{i % entities:03d}" for i in range(rows)],
            # Distinct times, shuffled: "latest" must come from event time, not row order.
            "event_time": [start + timedelta(seconds=int(s)) for s in rng.permutation(rows) * 60],
            "amount": rng.gamma(2.0, 40.0, rows).round(2),
            "age": pd.array(rng.integers(18, 90, rows), dtype="Int32"),
            "merchant_category": rng.choice(["grocery", "travel", "electronics", "fashion", "gaming"], rows),
            "hour": pd.array(rng.integers(0, 24, rows), dtype="Int32"),
            "is_fraud": pd.array(rng.integers(0, 2, rows), dtype="Int32"),
        }
    )
    frame.loc[4, "age"] = pd.NA
    frame.loc[6, "merchant_category"] = None
    return frame


def write_dataset(store: ObjectStore, stream: str, version: int, frame: pd.DataFrame) -> None:
    """The dataset version as ingestion writes it: Parquet files under the version's prefix."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.set_column(
        table.schema.get_field_index("event_time"),
        "event_time",
        table.column("event_time").cast(pa.timestamp("ms", tz="UTC")),
    )
    half = table.num_rows // 2
    for part, chunk in enumerate((table.slice(0, half), table.slice(half))):
        sink = pa.BufferOutputStream()
        pq.write_table(chunk, sink)
        store.put_bytes(
            f"{layout.dataset_prefix(stream, version)}part-{part:05d}.parquet", sink.getvalue().to_pybytes()
        )


def dataset_event(stream: str, version: int, frame: pd.DataFrame, store: ObjectStore) -> Event:
    return new_event(
        DatasetVersionCreated(
            stream=stream,
            dataset_version_id=layout.dataset_version_id(stream, version),
            version=version,
            uri=store.uri(layout.dataset_prefix(stream, version)),
            content_hash=uuid.uuid4().hex,
            row_count=len(frame),
            new_rows=len(frame),
            parent_version_id=None,
            mode="window",
            schema_json="{}",
            profile_json="{}",
            min_event_time=None,
            max_event_time=None,
        ),
        producer="test",
    )
