"""Materialization with Spark: dataset version Parquet -> feature frame -> offline Parquet + latest per entity.

The features are computed by ``feature_batch``, a plain pandas function applied per Arrow batch through
``DataFrame.mapInPandas``; it calls ``driftloop.featuredefs.compute_features``, the function serving uses online.
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

from driftloop import layout
from driftloop.errors import NotFoundError, ValidationFailed
from driftloop.featuredefs import compute_features
from driftloop.objectstore import ObjectStore
from driftloop.pipeline import FieldType, PipelineConfig

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import DataType, StructType

ROW_NUMBER_COLUMN = "_driftloop_row_number"


def _spark_type(field_type: FieldType) -> DataType:
    from pyspark.sql import types as T

    return {
        "string": T.StringType(),
        "int": T.IntegerType(),
        "long": T.LongType(),
        "double": T.DoubleType(),
        "float": T.FloatType(),
        "boolean": T.BooleanType(),
        "timestamp": T.TimestampType(),
    }[field_type]


def feature_columns(pipeline: PipelineConfig) -> list[str]:
    """Columns of a feature set, in order: entity key, event time, the features, the label."""
    stream = pipeline.stream
    return [stream.entity_key, stream.event_time, *pipeline.feature_names, stream.label]


def feature_schema(pipeline: PipelineConfig) -> StructType:
    """The Spark schema of ``feature_batch``'s output."""
    from pyspark.sql import types as T

    stream = pipeline.stream
    fields = [
        T.StructField(stream.entity_key, _spark_type(stream.field(stream.entity_key).type)),
        T.StructField(stream.event_time, T.TimestampType()),
    ]
    for feature in pipeline.features:
        kind = T.DoubleType() if feature.kind == "numeric" else T.StringType()
        fields.append(T.StructField(feature.name, kind))
    fields.append(T.StructField(stream.label, _spark_type(stream.field(stream.label).type)))
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
    label_type = stream.field(stream.label).type
    if label_type in ("int", "long"):
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


def compute_feature_frame(rows: DataFrame, pipeline: PipelineConfig) -> DataFrame:
    """Apply ``feature_batch`` to every batch of ``rows`` (``mapInPandas``)."""
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

    def apply(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield feature_batch(batch, pipeline)

    return rows.mapInPandas(apply, schema=feature_schema(pipeline))


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
    source = read_dataset(spark, store, layout.dataset_prefix(stream, version))
    features = compute_feature_frame(source, pipeline)
    prefix = layout.feature_set_prefix(stream, version)
    with tempfile.TemporaryDirectory(prefix="driftloop-features-") as tmp:
        out_dir = Path(tmp) / "data"
        features.write.mode("overwrite").parquet(str(out_dir))
        # Read back what was written: counting and the window do not recompute the features.
        written = spark.read.parquet(str(out_dir))
        row_count = written.count()
        latest = latest_per_entity(written, pipeline).toPandas()
        # Replace a previous materialization of this version: the manifest goes first and comes back last.
        store.delete(layout.feature_set_manifest_key(stream, version))
        store.delete(prefix)
        files = store.upload_dir(out_dir, prefix)
    manifest = {
        "stream": stream,
        "version": version,
        "dataset_version_id": dataset_version_id,
        "columns": feature_columns(pipeline),
        "feature_names": pipeline.feature_names,
        "row_count": row_count,
        "files": files,
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
