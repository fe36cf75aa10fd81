"""Dataset versions as data versioning: what a version covers, the diff of two versions, and retention.

- Sources: the landed batches a version took in (Kafka partition/offset ranges, HTTP request ids, replays);
  a cumulative version also covers its parent's, through ``parent_version_id``.
- Diff: rows added and removed (a multiset difference of per-row sha256 digests, read batch by batch with
  pyarrow) and, per column, how the profile moved.
- Retention: the landed batches of all but the newest ``keep_versions`` versions are compacted into one object
  per version. Versions are self-contained Parquet under ``datasets/``, so no version breaks; the batch rows stay
  (with ``compacted_into``) so that Kafka replays still skip their offsets.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from driftloop.clients.db.models import DatasetVersion, LandedBatch
from driftloop.clients.objectstore import ObjectStore
from driftloop.contracts.layout import dataset_prefix
from driftloop.contracts.pipeline import StreamSpec

from .content_hash import _canonical_columns
from .landing import Lander, arrow_schema, table_to_parquet

PROFILE_STATS = ("count", "nulls", "mean", "stddev", "min", "max", "distinct")


def version_sources(lander: Lander, version_id: str) -> list[dict[str, Any]]:
    with lander.Session() as session:
        rows = session.scalars(
            sa.select(LandedBatch)
            .where(LandedBatch.dataset_version_id == version_id)
            .order_by(LandedBatch.kafka_partition, LandedBatch.first_offset, LandedBatch.object_key)
        ).all()
    return [
        {
            "object_key": r.object_key,
            "source": r.source,
            "rows": r.rows,
            "kafka_partition": r.kafka_partition,
            "first_offset": r.first_offset,
            "last_offset": r.last_offset,
            "compacted_into": r.compacted_into,
        }
        for r in rows
    ]


def _version_batches(store: ObjectStore, stream: StreamSpec, version: int) -> Iterator[pa.RecordBatch]:
    keys = [k for k in store.list(dataset_prefix(stream.name, version)) if k.endswith(".parquet")]
    if not keys:
        return
    fs, root = store.arrow_filesystem()
    dataset = pads.dataset([f"{root}/{k}" for k in keys], filesystem=fs, format="parquet")
    yield from dataset.to_batches(columns=stream.field_names, batch_size=65_536)


def _row_digests(store: ObjectStore, stream: StreamSpec, version: int) -> Counter[bytes]:
    digests: Counter[bytes] = Counter()
    for batch in _version_batches(store, stream, version):
        for row in zip(*_canonical_columns(batch, stream.field_names), strict=True):
            digests[
                hashlib.sha256(json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode()).digest()[:16]
            ] += 1
    return digests


def _profile_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, Any]]:
    changes: dict[str, dict[str, Any]] = {}
    for column in sorted(set(old) | set(new)):
        a, b = old.get(column) or {}, new.get(column) or {}
        entry: dict[str, Any] = {}
        for stat in PROFILE_STATS:
            before, after = a.get(stat), b.get(stat)
            if before == after:
                continue
            change: dict[str, Any] = {"from": before, "to": after}
            if isinstance(before, int | float) and isinstance(after, int | float) and not isinstance(before, bool):
                change["delta"] = after - before
            entry[stat] = change
        if column not in old:
            entry["column"] = "added"
        elif column not in new:
            entry["column"] = "removed"
        if entry:
            changes[column] = entry
    return changes


def diff_versions(store: ObjectStore, stream: StreamSpec, old: DatasetVersion, new: DatasetVersion) -> dict[str, Any]:
    """Rows added/removed between two versions of one stream (by content, duplicates counted) and the profile
    change per column."""
    old_rows, new_rows = _row_digests(store, stream, old.version), _row_digests(store, stream, new.version)
    added, removed = new_rows - old_rows, old_rows - new_rows
    return {
        "stream": stream.name,
        "from": old.id,
        "to": new.id,
        "same_content": old.content_hash == new.content_hash,
        "rows": {"from": old.row_count, "to": new.row_count},
        "rows_added": sum(added.values()),
        "rows_removed": sum(removed.values()),
        "rows_unchanged": sum((old_rows & new_rows).values()),
        # Versions of a stream form one chain: each cut's parent is the version before it.
        "new_is_descendant": old.version < new.version,
        "profile_changes": _profile_changes(old.profile or {}, new.profile or {}),
    }


def compact(
    session_factory: sessionmaker[Session], store: ObjectStore, stream: StreamSpec, keep_versions: int
) -> dict[str, Any]:
    """Compact the landed batches of every version but the newest ``keep_versions`` into one object per version.
    Idempotent: a batch already compacted is left alone; objects are deleted only after the rows point at the
    compacted object."""
    with session_factory() as session:
        versions = list(
            session.scalars(
                sa.select(DatasetVersion.id)
                .where(DatasetVersion.stream == stream.name)
                .order_by(DatasetVersion.version.desc())
                .offset(keep_versions)
            )
        )
    compacted: list[dict[str, Any]] = []
    for version_id in sorted(versions):
        with session_factory() as session:
            batches = session.scalars(
                sa.select(LandedBatch)
                .where(LandedBatch.dataset_version_id == version_id, LandedBatch.compacted_into.is_(None))
                .order_by(LandedBatch.object_key)
            ).all()
        if not batches:
            continue
        version = int(version_id.rpartition("@v")[2])
        target = (
            f"landed/{stream.name}/compacted-v{version:06d}-{len(batches)}-{batches[0].object_key.rsplit('/', 1)[-1]}"
        )
        fs, root = store.arrow_filesystem()
        keys = [b.object_key for b in batches]
        table = pads.dataset(
            [f"{root}/{k}" for k in keys], filesystem=fs, format="parquet", schema=arrow_schema(stream)
        ).to_table()
        store.put_bytes(target, table_to_parquet(table))
        with session_factory.begin() as session:
            session.execute(
                sa.update(LandedBatch).where(LandedBatch.object_key.in_(keys)).values(compacted_into=target)
            )
        for key in keys:
            store.delete(key)
        compacted.append(
            {"dataset_version_id": version_id, "batches": len(keys), "rows": table.num_rows, "into": target}
        )
    return {"stream": stream.name, "kept_versions": keep_versions, "compacted": compacted}
