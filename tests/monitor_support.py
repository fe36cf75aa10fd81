"""What the monitor's tests feed it: raw transaction inputs, the champion's reference feature set in the object
store, the champion's ``ModelPromoted`` and logged predictions.

- ``raw_inputs(n, rng, amount_scale)``: ``n`` raw inputs of the demo pipeline (amounts scaled: a drift).
- ``put_reference(store, pipeline, raw)``: the features of ``raw`` as version 1 of the stream's feature set (one
  Parquet part, as the features service would write it); its prefix.
- ``champion_promoted(store, model, stream, prefix)``: version 1 of ``model`` the champion, trained on that set.
- ``prediction_logged(model, i, row, prediction)``: the serving's ``PredictionLogged`` of request ``req-<i>``.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from driftloop.clients.objectstore import ObjectStore
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.featuredefs import compute_features
from driftloop.contracts.layout import feature_set_prefix
from driftloop.contracts.payloads import ModelPromoted, PredictionLogged
from driftloop.contracts.pipeline import PipelineConfig

CATEGORIES = ["grocery", "travel", "electronics", "fashion", "gaming"]


def raw_inputs(n: int, rng: np.random.Generator, amount_scale: float = 1.0) -> list[dict[str, Any]]:
    return [
        {
            "customer_id": f"c{rng.integers(0, 100)}",
            "amount": float(rng.lognormal(3.5, 1.0) * amount_scale),
            "age": int(rng.integers(18, 90)),
            "hour": int(rng.integers(0, 24)),
            "merchant_category": str(rng.choice(CATEGORIES)),
        }
        for _ in range(n)
    ]


def put_reference(store: ObjectStore, pipeline: PipelineConfig, raw: list[dict[str, Any]]) -> str:
    """The features of ``raw`` as version 1 of the pipeline's stream's feature set; the set's prefix."""
    reference = compute_features(pd.DataFrame(raw), pipeline)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(reference, preserve_index=False), buffer)
    prefix = feature_set_prefix(pipeline.stream.name, 1)
    store.put_bytes(prefix + "part-00000.parquet", buffer.getvalue())
    return prefix


def champion_promoted(store: ObjectStore, model: str, stream: str, prefix: str) -> Event:
    """``ModelPromoted``: version 1 of ``model`` the champion, trained on the feature set at ``prefix``."""
    payload = ModelPromoted(
        model=model,
        version=1,
        alias="champion",
        previous_version=None,
        artifact_uri=store.uri(f"models/{model}/runs/r1/model.zip"),
        artifact_sha256="0" * 64,
        dataset_version_id=f"{stream}@v1",
        feature_set_uri=store.uri(prefix),
        reason="first version",
        gate_json="{}",
    )
    return new_event(payload, producer="test-registry")


def prediction_logged(model: str, i: int, row: dict[str, Any], prediction: float) -> Event:
    """The serving's ``PredictionLogged`` of request ``req-<i>`` (version 1, first instance) with ``row``."""
    payload = PredictionLogged(
        request_id=f"req-{i}",
        model=model,
        version=1,
        index=0,
        inputs=row,
        prediction=prediction,
        entity=row["customer_id"],
    )
    return new_event(payload, producer="test-serving")
