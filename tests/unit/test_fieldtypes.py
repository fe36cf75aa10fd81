"""The field-type table: every field type has every mapping, and the type systems of one row agree with each other
(a value survives Avro, lands in Arrow unchanged, and Spark and numpy call the Arrow type what the row says)."""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime
from typing import Any, get_args

import fastavro
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pyspark.sql.pandas.types import from_arrow_type, to_arrow_type

from driftloop.contracts.fieldtypes import (
    FIELD_TYPES,
    OIP_DATATYPES,
    OIP_FLOAT_DATATYPES,
    OIP_INTEGER_DATATYPES,
    FieldType,
    FieldTypeInfo,
    sample_column,
)
from driftloop.contracts.pipeline import FieldSpec, StreamSpec

# One ordinary value per field type, as a decoded record holds it.
SAMPLES: dict[str, Any] = {
    "string": "café ☕",
    "int": -7,
    "long": 2**40 + 3,
    "double": 0.1,
    "float": 0.5,
    "boolean": True,
    "timestamp": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
}
ROWS = [pytest.param(FIELD_TYPES[name], id=name) for name in get_args(FieldType)]


def _avro_round_trip(avro_type: Any, value: Any) -> Any:
    schema = fastavro.parse_schema(
        {"type": "record", "name": "Row", "fields": [{"name": "v", "type": ["null", avro_type]}]}
    )
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, {"v": value})
    buffer.seek(0)
    return fastavro.schemaless_reader(buffer, schema, schema)["v"]


def test_every_field_type_has_one_complete_row() -> None:
    assert list(FIELD_TYPES) == list(get_args(FieldType))
    assert set(SAMPLES) == set(FIELD_TYPES)
    for name, row in FIELD_TYPES.items():
        assert row.name == name
        assert row.avro and row.spark and row.oip and row.oip_accepted and row.python
        assert isinstance(row.arrow, pa.DataType) and isinstance(row.numpy, np.dtype)


@pytest.mark.parametrize("row", ROWS)
def test_a_value_survives_avro_and_lands_in_arrow_unchanged(row: FieldTypeInfo) -> None:
    value = SAMPLES[row.name]
    decoded = _avro_round_trip(row.avro, value)
    assert decoded == value
    assert isinstance(decoded, row.python) and isinstance(value, row.python)
    assert pa.array([decoded], type=row.arrow).to_pylist() == [value]


@pytest.mark.parametrize("row", ROWS)
def test_spark_calls_the_arrow_type_by_the_rows_spark_name(row: FieldTypeInfo) -> None:
    spark = from_arrow_type(row.arrow)
    assert spark.simpleString() == row.spark
    back = to_arrow_type(spark, timezone="UTC")
    if pa.types.is_timestamp(row.arrow):  # Spark keeps microseconds; the instant and the zone are the same
        assert pa.types.is_timestamp(back) and back.tz == row.arrow.tz
    else:
        assert back == row.arrow


@pytest.mark.parametrize("row", ROWS)
def test_numpy_dtype_is_what_arrow_converts_the_column_to(row: FieldTypeInfo) -> None:
    expected = row.arrow.to_pandas_dtype()
    if isinstance(expected, pd.DatetimeTZDtype):  # numpy has no time zones: UTC instants, naive
        expected = f"datetime64[{expected.unit}]"
    assert row.numpy == np.dtype(expected)


@pytest.mark.parametrize("row", ROWS)
def test_oip_datatype_has_the_width_of_the_landed_type(row: FieldTypeInfo) -> None:
    assert row.oip in row.oip_accepted <= OIP_DATATYPES
    bits = row.numpy.itemsize * 8
    expected = {"i": f"INT{bits}", "f": f"FP{bits}", "b": "BOOL"}.get(row.numpy.kind, "BYTES")
    assert row.oip == expected
    if row.is_number:  # integer tensors fill every number field
        assert row.oip_accepted >= OIP_INTEGER_DATATYPES
    assert bool(row.oip_accepted & OIP_FLOAT_DATATYPES) == row.is_float


@pytest.mark.parametrize("row", [r for r in ROWS if r.values[0].is_integer])
def test_integer_bounds_are_what_avro_and_arrow_hold(row: FieldTypeInfo) -> None:
    assert row.int_range is not None
    low, high = row.int_range
    for inside in (low, high):
        assert fastavro.validation.validate(inside, row.avro, raise_errors=False)
        assert pa.array([inside], type=row.arrow).to_pylist() == [inside]
    for outside in (low - 1, high + 1):
        assert not fastavro.validation.validate(outside, row.avro, raise_errors=False)
        with pytest.raises((pa.ArrowInvalid, OverflowError)):
            pa.array([outside], type=row.arrow)


def test_float_limit_is_the_largest_value_a_float_lands_as() -> None:
    row = FIELD_TYPES["float"]
    assert row.float_max is not None
    assert pa.array([row.float_max], type=row.arrow).to_pylist() == [row.float_max]
    assert math.isinf(pa.array([row.float_max * 1.0001], type=row.arrow).to_pylist()[0])
    assert FIELD_TYPES["double"].float_max == np.finfo(np.float64).max
    assert all(FIELD_TYPES[name].float_max is None for name in ("string", "int", "long", "boolean", "timestamp"))


def test_stream_avro_schema_uses_the_table() -> None:
    stream = StreamSpec(
        name="s",
        fields=[FieldSpec(name=f"f_{name}", type=name, nullable=False) for name in FIELD_TYPES],
        entity_key="f_string",
        event_time="f_timestamp",
        label="f_int",
    )
    schema = stream.avro_schema()
    assert [f["type"] for f in schema["fields"]] == [row.avro for row in FIELD_TYPES.values()]


@pytest.mark.parametrize("row", ROWS)
def test_sample_columns_are_valid_varied_values_of_the_arrow_type(row: FieldTypeInfo) -> None:
    column = sample_column(row.name, 12)
    assert column.type == row.arrow and len(column) == 12 and column.null_count == 0
    values = column.to_pylist()
    assert len(set(values)) > 1  # a group-by, a quantile and a top-values job see more than one value
    assert all(isinstance(v, row.python) for v in values)
    if row.is_numeric and row.name != "boolean":
        assert min(values) > 0  # log1p, sqrt and the like apply
