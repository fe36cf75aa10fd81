"""Where things live in the object store, declared once. Keys, not URIs: see ``ObjectStore.uri``."""

from __future__ import annotations


def landed_prefix(stream: str) -> str:
    return f"landed/{stream}/"


def landed_kafka_key(
    stream: str, partition: int, first_offset: int, last_offset: int, topic_id: str | None = None
) -> str:
    """Named by source offsets, so that a replay after a crash overwrites instead of duplicating; and by the
    topic's id when known, since a topic created again starts its offsets again and they name other records."""
    life = f"{topic_id}-" if topic_id else ""
    return f"landed/{stream}/kafka-{life}p{partition:04d}-{first_offset:020d}-{last_offset:020d}.parquet"


def landed_http_key(stream: str, request_id: str) -> str:
    return f"landed/{stream}/http-{request_id}.parquet"


def dataset_prefix(stream: str, version: int) -> str:
    return f"datasets/{stream}/v{version:06d}/"


def dataset_version_id(stream: str, version: int) -> str:
    return f"{stream}@v{version}"


def parse_dataset_version_id(dataset_version_id: str) -> tuple[str, int]:
    stream, _, version = dataset_version_id.rpartition("@v")
    if not stream or not version.isdigit():
        raise ValueError(f"not a dataset version id: {dataset_version_id!r} (expected STREAM@vN)")
    return stream, int(version)


def feature_set_prefix(stream: str, version: int) -> str:
    return f"features/{stream}/v{version:06d}/"


def model_artifact_key(model: str, run_id: str) -> str:
    return f"models/{model}/runs/{run_id}/model.zip"


def run_log_key(model: str, run_id: str) -> str:
    return f"models/{model}/runs/{run_id}/run.log"


def feature_set_manifest_key(stream: str, version: int) -> str:
    """Written last by the features service: a feature set without it is incomplete. Its ``_`` prefix keeps
    Spark and pyarrow from reading it as data."""
    return f"{feature_set_prefix(stream, version)}_manifest.json"


def feature_values_prefix(stream: str, version: int) -> str:
    """The offline store's feature values of a dataset version: one row per (entity, event time) with the
    aggregates as of that time. Outside ``features/<stream>/v*/``, so training never mistakes it for a
    training set."""
    return f"features/{stream}/values/v{version:06d}/"
