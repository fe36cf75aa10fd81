"""The champion's reference sample: rows of its training feature set (Parquet in the object store)."""

from __future__ import annotations

import pandas as pd
import pyarrow.dataset as pads

from driftloop.clients.objectstore import ObjectStore
from driftloop.errors import NotFoundError, ValidationFailed


def read_reference(
    store: ObjectStore, feature_set_uri: str, feature_names: list[str], max_rows: int, seed: int
) -> pd.DataFrame:
    """Up to ``max_rows`` rows (a seeded random sample) of the feature columns under ``feature_set_uri``."""
    fs, root = store.arrow_filesystem()
    key = store.key_of(feature_set_uri).strip("/")
    try:
        dataset = pads.dataset(f"{root}/{key}", filesystem=fs, format="parquet")
    except (FileNotFoundError, OSError) as exc:
        raise NotFoundError(f"feature set {feature_set_uri} cannot be read: {exc}") from exc
    missing = [name for name in feature_names if name not in dataset.schema.names]
    if missing:
        raise ValidationFailed(
            "missing_field",
            missing[0],
            f"feature set {feature_set_uri} lacks feature column(s) {missing}; it has {dataset.schema.names}",
        )
    frame = dataset.to_table(columns=feature_names).to_pandas()
    if frame.empty:
        raise ValidationFailed("empty", None, f"feature set {feature_set_uri} has no rows to use as the reference")
    if len(frame) > max_rows:
        frame = frame.sample(n=max_rows, random_state=seed)
    return frame.reset_index(drop=True)
