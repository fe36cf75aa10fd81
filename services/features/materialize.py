"""Materialization with Spark: dataset version Parquet -> feature frame -> offline Parquet + latest per entity.

The features are computed by ``feature_batch``, a plain pandas function applied per Arrow batch through
``DataFrame.mapInPandas``; it calls ``driftloop.contracts.featuredefs.compute_features``, the function serving
uses online.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from driftloop.clients.objectstore import ObjectStore
from driftloop.clients.spark import spark_type
from driftloop.contracts import layout
from driftloop.contracts.featuredefs import compute_features
from driftloop.contracts.fieldtypes import FIELD_TYPES, sample_column
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.errors import NotFoundError, ValidationFailed

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

ROW_NUMBER_COLUMN = "_driftloop_row_number"


def feature_columns(pipeline: PipelineConfig) -> list[str]:
    """Columns of a feature set, in order: entity key, event time, the features, the label."""
    stream = pipeline.stream
    return [stream.entity_key, stream.event_time, *pipeline.feature_names, *([stream.label] if stream.label else [])]


def feature_schema(pipeline: PipelineConfig) -> StructType:
    """The Spark schema of ``feature_batch``'s output."""
    from pyspark.sql import types as T

    stream = pipeline.stream
    fields = [
        T.StructField(stream.entity_key, spark_type(stream.field(stream.entity_key).type)),
        T.StructField(stream.event_time, spark_type(stream.field(stream.event_time).type)),
    ]
    for feature in pipeline.features:
        kind = T.DoubleType() if feature.kind == "numeric" else T.StringType()
        fields.append(T.StructField(feature.name, kind))
    if stream.label:  # absent when the labels come as feedback
        fields.append(T.StructField(stream.label, spark_type(stream.field(stream.label).type)))
    return T.StructType(fields)


def feature_batch(raw: pd.DataFrame, pipeline: PipelineConfig) -> pd.DataFrame:
    """Features of one batch of raw rows, in ``feature_columns`` order, typed as ``feature_schema`` says.

    Numeric infinities become missing and categoricals become strings, as ``features_from_instances`` (serving)
    and ``ModelArtifact.matrix`` (the model) see them."""
    stream = pipeline.stream
    computed = compute_features(raw, pipeline, keep_keys=True)
    out = pd.DataFrame(index=computed.index)
    for column in feature_columns(pipeline):
        out[column] = computed[column] if column in computed.columns else None
    for feature in pipeline.features:
        if feature.kind == "numeric":
            out[feature.name] = out[feature.name].replace([np.inf, -np.inf], np.nan)
        else:
            out[feature.name] = out[feature.name].astype("object").map(lambda v: None if pd.isna(v) else str(v))
    if stream.label and FIELD_TYPES[stream.field(stream.label).type].is_integer:
        # Nullable integers: a missing label must not turn the column into floats Arrow refuses to narrow.
        out[stream.label] = pd.array(pd.to_numeric(out[stream.label], errors="coerce"), dtype="Int64")
    out[stream.event_time] = pd.to_datetime(out[stream.event_time], utc=True).dt.tz_localize(None)
    return out


def read_dataset(spark: SparkSession, store: ObjectStore, prefix: str) -> DataFrame:
    """A dataset version's rows as a Spark DataFrame: read in place from a local store, through pyarrow from S3."""
    parquet_keys = [k for k in store.list(prefix) if k.endswith(".parquet")]
    if not parquet_keys:
        raise NotFoundError(f"no Parquet files under {store.uri(prefix)}: the dataset version has no data")
    local = store.local_path(prefix)
    if local is not None:
        return spark.read.parquet(*[str(store.local_path(k)) for k in parquet_keys])
    filesystem, root = store.arrow_filesystem()
    table = pads.dataset([f"{root}/{k}" for k in parquet_keys], filesystem=filesystem, format="parquet").to_table()
    return spark.createDataFrame(table.to_pandas())


def with_event_timestamp(rows: DataFrame, pipeline: PipelineConfig) -> DataFrame:
    """``rows`` with the entity key and event time checked and the event time as a Spark timestamp."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    stream = pipeline.stream
    missing = [c for c in (stream.entity_key, stream.event_time) if c not in rows.columns]
    if missing:
        raise ValidationFailed("missing_field", missing[0], f"dataset rows lack the stream's {missing[0]!r} column")
    event_time_type = rows.schema[stream.event_time].dataType
    if isinstance(event_time_type, T.IntegralType):
        # Event times stored as epoch milliseconds (the Avro timestamp-millis encoding).
        rows = rows.withColumn(stream.event_time, F.timestamp_millis(F.col(stream.event_time)))
    return rows


def compute_feature_frame(rows: DataFrame, pipeline: PipelineConfig) -> DataFrame:
    """Apply ``feature_batch`` to every batch of ``rows`` (``mapInPandas``). Aggregate features are left empty:
    ``aggregate_values`` and ``point_in_time_join`` fill them."""
    rows = with_event_timestamp(rows, pipeline)

    def apply(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield feature_batch(batch, pipeline)

    return rows.mapInPandas(apply, schema=feature_schema(pipeline))


MICROS_COLUMN = "_driftloop_event_micros"
SIDE_COLUMN = "_driftloop_side"
VALUES_COLUMN = "_driftloop_values"
AS_OF_COLUMN = "_driftloop_as_of"


def aggregate_values(rows: DataFrame, pipeline: PipelineConfig) -> DataFrame:
    """The offline store's feature values: one row per (entity, event time t) holding every aggregate feature
    over the entity's records with event time in ``(t - window, t]`` -- the values known once every record at
    ``t`` has been seen, i.e. what the online store holds after them. Rows without entity or event time are left
    out. Records at one event time are peers: they share their values."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    stream = pipeline.stream
    rows = with_event_timestamp(rows, pipeline)
    base = rows.filter(F.col(stream.entity_key).isNotNull() & F.col(stream.event_time).isNotNull()).withColumn(
        MICROS_COLUMN, F.unix_micros(F.col(stream.event_time))
    )
    columns = []
    for feature in pipeline.aggregate_features:
        width = int(feature.window_seconds or 0) * 1_000_000
        window = Window.partitionBy(stream.entity_key).orderBy(MICROS_COLUMN).rangeBetween(-(width - 1), 0)
        output_type = "string" if feature.kind == "categorical" else "double"
        source = F.col(feature.source) if feature.source is not None else None
        if feature.aggregate == "count":
            expr = F.count(source if source is not None else F.lit(1))
        elif feature.aggregate == "last":
            value = source.cast(output_type)  # type: ignore[union-attr]
            # Newest by event time; peers at one event time: the greatest value (independent of arrival order).
            expr = F.max_by(value, F.when(value.isNotNull(), F.struct(F.col(MICROS_COLUMN), value)))
        else:
            value = source.cast("double")  # type: ignore[union-attr]
            expr = {"mean": F.avg, "sum": F.sum, "min": F.min, "max": F.max}[feature.aggregate](value)  # type: ignore[index]
        columns.append(expr.over(window).cast(output_type).alias(feature.name))
    return base.select(stream.entity_key, stream.event_time, *columns).dropDuplicates(
        [stream.entity_key, stream.event_time]
    )


def point_in_time_join(labels: DataFrame, values: DataFrame, pipeline: PipelineConfig) -> DataFrame:
    """Each row of ``labels`` (entity key, event time T, ...) with every aggregate feature taken from the newest
    row of ``values`` of its entity with event time **strictly before** T (tie rule: values stamped exactly T are
    not visible, so nothing recorded at the label's own instant -- the record itself included -- leaks in). No
    such row: missing (a count: 0). Output columns: those of ``labels`` (aggregate placeholders filled in place),
    then any aggregate ``labels`` lacked."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    stream = pipeline.stream
    names = [f.name for f in pipeline.aggregate_features]
    packed = values.select(
        stream.entity_key, stream.event_time, F.lit(1).alias(SIDE_COLUMN), F.struct(*names).alias(VALUES_COLUMN)
    )
    order = [*labels.columns, *(n for n in names if n not in labels.columns)]
    left = labels.drop(*names).withColumn(SIDE_COLUMN, F.lit(0))
    left = left.withColumn(VALUES_COLUMN, F.lit(None).cast(packed.schema[VALUES_COLUMN].dataType))
    # Labels sort before values at an equal event time, and each row looks only at the rows before it.
    before = (
        Window.partitionBy(stream.entity_key)
        .orderBy(F.col(stream.event_time).asc_nulls_first(), F.col(SIDE_COLUMN))
        .rowsBetween(Window.unboundedPreceding, -1)
    )
    joined = (
        left.unionByName(packed, allowMissingColumns=True)
        .withColumn(AS_OF_COLUMN, F.last(F.col(VALUES_COLUMN), ignorenulls=True).over(before))
        .filter(F.col(SIDE_COLUMN) == 0)
    )
    selected = []
    for column in order:
        spec = next((f for f in pipeline.aggregate_features if f.name == column), None)
        if spec is None:
            selected.append(F.col(column))
        elif spec.aggregate == "count":
            selected.append(F.coalesce(F.col(f"{AS_OF_COLUMN}.{column}"), F.lit(0.0)).alias(column))
        else:
            selected.append(F.col(f"{AS_OF_COLUMN}.{column}").alias(column))
    return joined.select(*selected)


def latest_per_entity(features: DataFrame, pipeline: PipelineConfig) -> DataFrame:
    """One row per entity: its newest by event time."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    stream = pipeline.stream
    newest_first = Window.partitionBy(stream.entity_key).orderBy(F.col(stream.event_time).desc_nulls_last())
    return (
        features.withColumn(ROW_NUMBER_COLUMN, F.row_number().over(newest_first))
        .filter(F.col(ROW_NUMBER_COLUMN) == 1)
        .drop(ROW_NUMBER_COLUMN)
    )


def _json_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def online_rows(latest: pd.DataFrame, pipeline: PipelineConfig) -> list[dict[str, Any]]:
    """Rows for the online store from the latest-per-entity frame: features only (no label)."""
    stream = pipeline.stream
    now = datetime.now(tz=UTC)
    event_times = pd.to_datetime(latest[stream.event_time], utc=True)
    rows = []
    for position, record in enumerate(latest[[stream.entity_key, *pipeline.feature_names]].itertuples(index=False)):
        entity, *values = record
        if entity is None or (isinstance(entity, float) and np.isnan(entity)):
            continue  # no entity key: nothing to look it up by
        event_time = event_times.iloc[position]
        rows.append(
            {
                "stream": stream.name,
                "entity": str(entity),
                "values": {n: _json_value(v) for n, v in zip(pipeline.feature_names, values, strict=True)},
                "event_time": None if pd.isna(event_time) else event_time.to_pydatetime(),
                "updated_at": now,
            }
        )
    return rows


@dataclass
class Materialized:
    dataset_version_id: str
    prefix: str
    uri: str
    files: list[str]
    row_count: int
    latest: list[dict[str, Any]]


def materialize(
    spark: SparkSession,
    store: ObjectStore,
    pipeline: PipelineConfig,
    version: int,
    dataset_version_id: str,
) -> Materialized:
    """Compute a dataset version's features, write them offline (Parquet + manifest, last) and return the
    latest values per entity for the online store."""
    stream = pipeline.stream.name
    spec = pipeline.stream
    source = with_event_timestamp(read_dataset(spark, store, layout.dataset_prefix(stream, version)), pipeline)
    features = compute_feature_frame(source, pipeline)
    prefix = layout.feature_set_prefix(stream, version)
    values_prefix = layout.feature_values_prefix(stream, version)
    aggregates = [f.name for f in pipeline.aggregate_features]
    with tempfile.TemporaryDirectory(prefix="driftloop-features-") as tmp:
        out_dir, values_dir = Path(tmp) / "data", Path(tmp) / "values"
        training_set = features
        current = features
        if aggregates:
            # The offline store first (written and read back, so the joins below do not recompute windows).
            aggregate_values(source, pipeline).write.mode("overwrite").parquet(str(values_dir))
            values = spark.read.parquet(str(values_dir))
            training_set = point_in_time_join(features, values, pipeline)
            # Online: each entity's newest record with the aggregates as of its time (that record included).
            current = features.drop(*aggregates).join(values, [spec.entity_key, spec.event_time], "left")
        training_set.write.mode("overwrite").parquet(str(out_dir))
        # Read back what was written: the window does not recompute the features. The count is the files' own
        # (their footers), not one more Spark job.
        written = spark.read.parquet(str(out_dir))
        row_count = pads.dataset(str(out_dir), format="parquet").count_rows()
        latest = latest_per_entity(written if not aggregates else current, pipeline).toPandas()
        # Replace a previous materialization of this version: the manifest goes first and comes back last.
        store.delete(layout.feature_set_manifest_key(stream, version))
        store.delete(prefix)
        store.delete(values_prefix)
        files = store.upload_dir(out_dir, prefix)
        value_files = store.upload_dir(values_dir, values_prefix) if aggregates else []
    manifest = {
        "stream": stream,
        "version": version,
        "dataset_version_id": dataset_version_id,
        "feature_view_version": pipeline.feature_view_version,
        "columns": feature_columns(pipeline),
        "feature_names": pipeline.feature_names,
        "aggregate_features": aggregates,
        "row_count": row_count,
        "files": files,
        "feature_values_uri": store.uri(values_prefix) if aggregates else None,
        "feature_values_files": value_files,
        "point_in_time_rule": "aggregates as of the newest feature values strictly before each row's event time",
        "created_at": datetime.now(tz=UTC).isoformat(),
    }
    store.put_bytes(layout.feature_set_manifest_key(stream, version), json.dumps(manifest, indent=2).encode())
    return Materialized(
        dataset_version_id=dataset_version_id,
        prefix=prefix,
        uri=store.uri(prefix),
        files=files,
        row_count=row_count,
        latest=online_rows(latest, pipeline),
    )


# Enough rows that the per-row code is JIT-compiled at start too (see the ingestion's warm-up).
WARM_ROWS = 2000


def warm_materializations(spark: SparkSession, folder: Path, pipelines: list[PipelineConfig]) -> list[Materialized]:
    """Each pipeline's materialization of ``WARM_ROWS`` made-up rows of its stream, in a scratch store under
    ``folder`` (nothing reaches the online store): the real jobs compiled and JIT-warmed at start."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from driftloop.clients.objectstore import LocalObjectStore

    store = LocalObjectStore(folder / "warm-features")
    results = []
    for pipeline in pipelines:
        stream = pipeline.stream
        table = pa.table({f.name: sample_column(f.type, WARM_ROWS) for f in stream.fields})
        local = store.local_path(layout.dataset_prefix(stream.name, 1))
        assert local is not None  # a local store
        local.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, local / "part-00000.parquet")
        results.append(materialize(spark, store, pipeline, 1, f"{stream.name}@warm"))
    return results
