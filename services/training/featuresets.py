"""Which feature set a run trains on, found in the object store (the features service's output, not its tables).

A feature set is complete once its ``_manifest.json`` exists (written last). The newest complete version wins;
a store holding feature sets without manifests (written by other tools) falls back to the newest with data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from driftloop.clients.objectstore import ObjectStore
from driftloop.contracts import layout
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
