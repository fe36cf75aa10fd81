"""Spark jobs of the ingestion service: read landed Parquet, build a dataset version (cumulative or window),
hash it independently of row order, profile it and write it as immutable Parquet.

The SparkSession is the process's one from ``driftloop.clients.spark``.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from driftloop.clients.objectstore import ObjectStore
from driftloop.clients.spark import spark_type
from driftloop.contracts.fieldtypes import FIELD_TYPES, sample_column
from driftloop.contracts.pipeline import DatasetSpec, StreamSpec

from .content_hash import SLICE_COLUMNS, combine, slices_batch
from .landing import arrow_schema, table_to_parquet

log = logging.getLogger(__name__)

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
QUANTILE_ERROR = 0.01  # relative
TOP_VALUES = 10
TOP_VALUE_TYPES = ("string", "boolean")
NUMERIC_TYPES = {name for name, field_type in FIELD_TYPES.items() if field_type.is_number}


def spark_schema(stream: StreamSpec) -> T.StructType:
    return T.StructType([T.StructField(f.name, spark_type(f.type), nullable=True) for f in stream.fields])


def read_parquet(spark: SparkSession, store: ObjectStore, stream: StreamSpec, keys: list[str]) -> DataFrame:
    """The rows of the Parquet objects ``keys``, with the stream's schema (fields missing from old files are
    null). Local stores are read by Spark directly; S3 through pyarrow (no Hadoop S3 jars needed)."""
    schema = spark_schema(stream)
    if not keys:
        return spark.createDataFrame([], schema)
    paths = [store.local_path(k) for k in keys]
    if all(p is not None for p in paths):
        return spark.read.schema(schema).parquet(*[str(p) for p in paths])
    fs, root = store.arrow_filesystem()
    table = pads.dataset([f"{root}/{k}" for k in keys], filesystem=fs, format="parquet", schema=arrow_schema(stream))
    return spark.createDataFrame(table.to_table(), schema=schema)


def drop_duplicates(parent: DataFrame, new: DataFrame, stream: StreamSpec, unique_by: list[str]) -> DataFrame:
    """parent + new with one row per ``unique_by`` key: the parent's row if it has one, else the first of the new
    rows in a fixed order (every other column), so that the same input always keeps the same row."""
    from pyspark.sql.window import Window

    tagged = parent.withColumn("_from_new", F.lit(1)).unionByName(new.withColumn("_from_new", F.lit(2)))
    others = [F.col(n).asc_nulls_last() for n in stream.field_names if n not in unique_by]
    order = Window.partitionBy(*unique_by).orderBy(F.col("_from_new"), *others)
    return tagged.withColumn("_rank", F.row_number().over(order)).where(F.col("_rank") == 1).drop("_rank", "_from_new")


def select_rows(
    parent: DataFrame,
    new: DataFrame,
    stream: StreamSpec,
    mode: str,
    window_rows: int,
    unique_by: list[str] | None = None,
) -> DataFrame:
    """cumulative: parent + new; window: the newest ``window_rows`` rows by event time over both (ties broken
    by every other column, so that the same input always gives the same rows). With ``unique_by``, one row per
    key first."""
    combined = drop_duplicates(parent, new, stream, unique_by) if unique_by else parent.unionByName(new)
    if mode == "cumulative":
        return combined
    others = [F.col(n).asc_nulls_last() for n in stream.field_names if n != stream.event_time]
    return combined.orderBy(F.col(stream.event_time).desc_nulls_last(), *others).limit(window_rows)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def version_statistics(df: DataFrame, stream: StreamSpec) -> tuple[str, int, dict[str, dict[str, Any]]]:
    """(content hash, row count, profile) of ``df`` in two Spark jobs over it (cache it first: both read it).

    1. One aggregation over the rows with their hash slices (``mapInArrow``): row count and slice sums (the hash),
       and per column count and nulls; numbers: min/max/mean/stddev and approximate quantiles; timestamps:
       min/max.
    2. One grouping of the string and boolean values: per column the number of distinct values (strings) and
       the ``TOP_VALUES`` most frequent (by count, ties by value).

    The same figures as ``DataFrame.approxQuantile``/``countDistinct``/a ``groupBy`` per column would give
    (Spark's ``approxQuantile`` is ``approx_percentile`` over the non-null, non-NaN values as doubles with an
    accuracy of 1/relative error), in two jobs instead of six."""
    columns = stream.field_names

    def with_slices(batches: Any) -> Any:
        for batch in batches:
            slices = slices_batch(batch, columns)
            yield pa.RecordBatch.from_arrays(
                [*batch.columns, *slices.columns], names=[*batch.schema.names, *SLICE_COLUMNS]
            )

    hashed_schema = T.StructType([*df.schema.fields, *(T.StructField(c, T.LongType()) for c in SLICE_COLUMNS)])
    aggs = [
        F.count(F.lit(1)).alias("_rows"),
        *[F.sum(F.col(c).cast("decimal(38,0)")).alias(f"_{c}") for c in SLICE_COLUMNS],
    ]
    numeric = [f.name for f in stream.fields if f.type in NUMERIC_TYPES]
    accuracy = math.ceil(1 / QUANTILE_ERROR)
    for f in stream.fields:
        c = F.col(f.name)
        aggs += [F.count(c).alias(f"{f.name}__count"), F.sum(c.isNull().cast("long")).alias(f"{f.name}__nulls")]
        if f.type in NUMERIC_TYPES:
            aggs += [
                F.min(c).alias(f"{f.name}__min"),
                F.max(c).alias(f"{f.name}__max"),
                F.mean(c).alias(f"{f.name}__mean"),
                F.stddev(c).alias(f"{f.name}__stddev"),
            ]
        elif f.type == "timestamp":
            # As epoch millis: collect() would turn timestamps into naive datetimes in the driver's local zone.
            aggs += [
                F.unix_millis(F.min(c)).alias(f"{f.name}__min"),
                F.unix_millis(F.max(c)).alias(f"{f.name}__max"),
            ]
    for name in numeric:
        value = F.col(name).cast("double")
        aggs.append(F.percentile_approx(F.when(~F.isnan(value), value), list(QUANTILES), accuracy).alias(f"_q_{name}"))
    totals = df.mapInArrow(with_slices, hashed_schema).agg(*aggs).collect()[0].asDict()
    count = int(totals.pop("_rows"))
    digest = combine(stream, count, [int(totals.pop(f"_{c}") or 0) for c in SLICE_COLUMNS])
    quantiles = {name: totals.pop(f"_q_{name}") for name in numeric}
    top_values, distinct = _value_counts(df, stream)
    result: dict[str, dict[str, Any]] = {}
    for f in stream.fields:
        entry: dict[str, Any] = {"type": f.type}
        for key, value in totals.items():
            column, _, stat = key.partition("__")
            if column == f.name:
                entry[stat] = _finite(value)
        entry["nulls"] = int(entry.get("nulls") or 0)
        if f.type == "timestamp":
            for stat in ("min", "max"):
                if entry.get(stat) is not None:
                    entry[stat] = datetime.fromtimestamp(entry[stat] / 1000, tz=UTC).isoformat()
        if f.type == "string":
            entry["distinct"] = distinct.get(f.name, 0)
        result[f.name] = entry
    for name in numeric:
        values = quantiles[name]
        result[name]["quantiles"] = (
            {str(q): _finite(v) for q, v in zip(QUANTILES, values, strict=True)} if values else {}
        )
    for f in stream.fields:
        if f.type in TOP_VALUE_TYPES:
            result[f.name]["top_values"] = top_values.get(f.name, [])
    return digest, count, result


def _value_counts(df: DataFrame, stream: StreamSpec) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """Per string or boolean column, its ``TOP_VALUES`` most frequent non-null values with their counts (by count,
    ties by value) and its number of distinct non-null values, from one grouping of (column, value) pairs."""
    from pyspark.sql.window import Window

    fields = [f for f in stream.fields if f.type in TOP_VALUE_TYPES]
    if not fields:
        return {}, {}
    # Booleans as "false"/"true": the same order as the booleans, turned back below.
    pairs = df.select(
        F.explode(
            F.array(*[F.struct(F.lit(f.name).alias("c"), F.col(f.name).cast("string").alias("v")) for f in fields])
        ).alias("p")
    ).select(F.col("p.c").alias("c"), F.col("p.v").alias("v"))
    counts = pairs.where(F.col("v").isNotNull()).groupBy("c", "v").agg(F.count(F.lit(1)).alias("n"))
    ranked = counts.withColumn(
        "rank", F.row_number().over(Window.partitionBy("c").orderBy(F.col("n").desc(), F.col("v")))
    ).withColumn("distinct", F.count(F.lit(1)).over(Window.partitionBy("c")))
    top: dict[str, list[dict[str, Any]]] = {}
    distinct: dict[str, int] = {}
    booleans = {f.name for f in fields if f.type == "boolean"}
    for r in ranked.where(F.col("rank") <= TOP_VALUES).orderBy("c", "rank").collect():
        value = r["v"] == "true" if r["c"] in booleans else r["v"]
        top.setdefault(r["c"], []).append({"value": value, "count": int(r["n"])})
        distinct[r["c"]] = int(r["distinct"])
    return top, distinct


@dataclass(frozen=True)
class CutResult:
    row_count: int
    content_hash: str
    profile: dict[str, dict[str, Any]]
    files: list[str]
    checks: dict[str, Any] | None = None
    # Where the cut's time went (statistics, unique_by, write), for its log line.
    seconds: dict[str, float] = field(default_factory=dict)


def build_version(
    spark: SparkSession,
    store: ObjectStore,
    stream: StreamSpec,
    *,
    parent_keys: list[str],
    new_keys: list[str],
    mode: str,
    window_rows: int,
    prefix: str,
    unique_by: list[str] | None = None,
) -> CutResult:
    """Read parent + new landed rows, select the version's rows, hash, profile, write Parquet under ``prefix``.
    The rows are selected once (cached) and read by three jobs: statistics (two) and the write."""
    started = time.perf_counter()
    parent = read_parquet(spark, store, stream, parent_keys)
    new = read_parquet(spark, store, stream, new_keys)
    rows = select_rows(parent, new, stream, mode, window_rows, unique_by).cache()
    checks: dict[str, Any] | None = None
    seconds: dict[str, float] = {}
    try:
        digest, count, stats = version_statistics(rows, stream)
        seconds["statistics"] = time.perf_counter() - started  # with reading and selecting the rows (cached)
        if unique_by:
            before = parent.count() + new.count()
            kept = drop_duplicates(parent, new, stream, unique_by).count()
            checks = {"unique_by": list(unique_by), "rows_before": before, "duplicates_dropped": before - kept}
            seconds["unique_by"] = time.perf_counter() - started - sum(seconds.values())
        with tempfile.TemporaryDirectory(prefix="driftloop-dataset-") as tmp:
            out = Path(tmp) / "data"
            # One sorted file per version: versions are small to medium and read whole by training.
            rows.repartition(1).sortWithinPartitions(stream.event_time).write.parquet(str(out), compression="zstd")
            files = store.upload_dir(out, prefix)
        seconds["write"] = time.perf_counter() - started - sum(seconds.values())
    finally:
        rows.unpersist()
    return CutResult(row_count=count, content_hash=digest, profile=stats, files=files, checks=checks, seconds=seconds)


# Enough rows that the per-row code (Parquet, Arrow, the generated code) is JIT-compiled at start too: after a
# warm-up of 50 rows, the first cut of 10 000 rows took about 0.7 s longer than the next ones.
WARM_ROWS = 2000


def warm_cuts(spark: SparkSession, folder: Path, streams: list[tuple[StreamSpec, DatasetSpec]]) -> list[CutResult]:
    """Two cuts (a first version, then one on top of it) of ``WARM_ROWS`` made-up rows of each stream, with its
    dataset settings, in a scratch store under ``folder``: the real cut's jobs compiled and JIT-warmed at start."""
    from driftloop.clients.objectstore import LocalObjectStore

    store = LocalObjectStore(folder / "warm-cuts")
    results = []
    for stream, dataset in streams:
        table = pa.table({f.name: sample_column(f.type, WARM_ROWS) for f in stream.fields}, schema=arrow_schema(stream))
        parent_keys: list[str] = []
        for version in (1, 2):
            landed = f"{stream.name}/landed/{version}.parquet"
            store.put_bytes(landed, table_to_parquet(table))
            result = build_version(
                spark,
                store,
                stream,
                parent_keys=parent_keys,
                new_keys=[landed],
                mode=dataset.mode,
                window_rows=dataset.window_rows,
                prefix=f"{stream.name}/v{version}/",
                unique_by=dataset.unique_by,
            )
            parent_keys = [k for k in result.files if k.endswith(".parquet")]
            results.append(result)
    return results
