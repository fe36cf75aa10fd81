"""Which feature set a run trains on, found in the object store (the features service's output, not its tables).

A feature set is complete once its ``_manifest.json`` exists (written last). The newest complete version wins;
a store holding feature sets without manifests (written by other tools) falls back to the newest with data.

The version is resolved when the run starts, not when it was requested: a request names the version known then,
and the run trains on the newest usable one (never an older one). A pinned request (a rerun, a person's pin)
trains on exactly the version it names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import pyarrow.dataset as pads

from driftloop.clients.objectstore import ObjectStore
from driftloop.contracts import layout
from driftloop.contracts.payloads import TrainingRequested
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.errors import NotFoundError


@dataclass(frozen=True)
class ResolvedFeatureSet:
    dataset_version_id: str
    version: int
    prefix: str
    uri: str


def _resolved(store: ObjectStore, stream: str, version: int) -> ResolvedFeatureSet:
    prefix = layout.feature_set_prefix(stream, version)
    return ResolvedFeatureSet(layout.dataset_version_id(stream, version), version, prefix, store.uri(prefix))


def _has_data(store: ObjectStore, prefix: str) -> bool:
    return any(k.endswith(".parquet") for k in store.list(prefix))


def resolve_feature_set(store: ObjectStore, pipeline: PipelineConfig, requested: str | None) -> ResolvedFeatureSet:
    """The feature set of ``requested`` (a dataset version id), or the newest of the model's stream if None."""
    stream = pipeline.stream.name
    if requested:
        try:
            requested_stream, version = layout.parse_dataset_version_id(requested)
        except ValueError as exc:
            raise NotFoundError(str(exc)) from None
        if requested_stream != stream:
            raise NotFoundError(
                f"dataset version {requested} is of stream {requested_stream!r}, "
                f"but model {pipeline.model.name!r} trains on stream {stream!r}"
            )
        resolved = _resolved(store, stream, version)
        if not store.exists(layout.feature_set_manifest_key(stream, version)) and not _has_data(store, resolved.prefix):
            raise NotFoundError(
                f"no materialized feature set for dataset version {requested} (nothing at {resolved.uri}): "
                "the features service has not materialized it"
            )
        return resolved

    root = f"features/{stream}/"
    pattern = re.compile(rf"^{re.escape(root)}v(\d+)/(.+)$")
    complete: set[int] = set()
    with_data: set[int] = set()
    for key in store.list(root):
        match = pattern.match(key)
        if match is None:
            continue
        version, name = int(match.group(1)), match.group(2)
        if key == layout.feature_set_manifest_key(stream, version):
            complete.add(version)
        elif name.endswith(".parquet"):
            with_data.add(version)
    candidates = complete or with_data
    if not candidates:
        raise NotFoundError(
            f"no materialized feature set of stream {stream!r} under {store.uri(root)}: "
            "no dataset version has been materialized yet"
        )
    return _resolved(store, stream, max(candidates))


def resolve_for_request(store: ObjectStore, pipeline: PipelineConfig, asked: TrainingRequested) -> ResolvedFeatureSet:
    """The feature set a request trains on, decided now: the version it names if pinned, else the newest
    materialized one, which must not be older than the version it names."""
    if asked.pinned or asked.rerun_of:
        return resolve_feature_set(store, pipeline, asked.dataset_version_id)
    if not asked.dataset_version_id:
        return resolve_feature_set(store, pipeline, None)
    try:
        floor = layout.parse_dataset_version_id(asked.dataset_version_id)[1]
        newest = resolve_feature_set(store, pipeline, None)
    except (ValueError, NotFoundError):
        newest = None
    if newest is not None and newest.version >= floor:
        return newest
    # Nothing as new as the named version is materialized: the named one (its error says which was asked for).
    return resolve_feature_set(store, pipeline, asked.dataset_version_id)


def rows_since(store: ObjectStore, pipeline: PipelineConfig, feature_set: ResolvedFeatureSet, since: datetime) -> int:
    """Rows of the feature set whose event time is at or after ``since`` (reads the event-time column only)."""
    keys = [k for k in store.list(feature_set.prefix) if k.endswith(".parquet")]
    if not keys:
        return 0
    filesystem, root = store.arrow_filesystem()
    dataset = pads.dataset([f"{root}/{k}" for k in keys], filesystem=filesystem, format="parquet")
    times = dataset.to_table(columns=[pipeline.stream.event_time]).column(0).to_pandas()
    return int((pd.to_datetime(times, utc=True) >= pd.Timestamp(since).tz_convert("UTC")).sum())
