"""The content hash of a dataset version: sha256 over its rows, independent of their order.

Each row is serialised canonically (JSON array of the stream's fields in declared order; timestamps as epoch
millis) and hashed with sha256. The 32-byte digest is cut into four 56-bit slices; the dataset's hash is the
sha256 of (schema, row count, the four slice sums). Sums commute, so row order and partitioning do not matter,
while a changed, added or removed row changes the sums. The per-row part runs inside Spark (``mapInArrow``) and
in plain pyarrow with the same code, so both give the same hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from driftloop.contracts.pipeline import StreamSpec

SLICES = 4
SLICE_BYTES = 7  # 56 bits: non-negative in a signed 64-bit column; sums are taken as DECIMAL(38, 0)
SLICE_COLUMNS = tuple(f"h{i}" for i in range(SLICES))


def _canonical_columns(batch: pa.RecordBatch | pa.Table, columns: Sequence[str]) -> list[list[object]]:
    values = []
    for name in columns:
        column = batch.column(name)
        if pa.types.is_timestamp(column.type):
            # Spark hands timestamps over in microseconds, landed Parquet has millis: hash both as millis.
            column = pc.cast(pc.cast(column, pa.timestamp("ms", tz="UTC"), safe=False), pa.int64())
        values.append(column.to_pylist())
    return values


def row_slices(batch: pa.RecordBatch | pa.Table, columns: Sequence[str]) -> list[list[int]]:
    """Per row, the four 56-bit slices of sha256(canonical row); one list per slice."""
    out: list[list[int]] = [[] for _ in range(SLICES)]
    for row in zip(*_canonical_columns(batch, columns), strict=True):
        digest = hashlib.sha256(json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode()).digest()
        for i in range(SLICES):
            out[i].append(int.from_bytes(digest[i * SLICE_BYTES : (i + 1) * SLICE_BYTES], "big"))
    return out


def slices_batch(batch: pa.RecordBatch, columns: Sequence[str]) -> pa.RecordBatch:
    slices = row_slices(batch, columns)
    return pa.RecordBatch.from_arrays([pa.array(s, pa.int64()) for s in slices], names=list(SLICE_COLUMNS))


def schema_signature(stream: StreamSpec) -> list[list[str]]:
    return [[f.name, f.type] for f in stream.fields]


def combine(stream: StreamSpec, row_count: int, sums: Iterable[int]) -> str:
    payload = {"schema": schema_signature(stream), "rows": row_count, "sums": [str(int(s)) for s in sums]}
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()


def content_hash_of_table(table: pa.Table, stream: StreamSpec) -> str:
    """The content hash of an Arrow table (the same value Spark computes for the same rows)."""
    slices = row_slices(table, stream.field_names)
    return combine(stream, table.num_rows, (sum(s) for s in slices))
