"""The field types of a stream, and what each one is in every other type system driftloop talks to.

One row per ``FieldType``: the Avro type producers write, the Arrow type records land as (Parquet), the Spark SQL
type the Spark jobs read, the numpy dtype of a column without nulls, the Open Inference Protocol datatype serving
declares (and the ones it accepts), and what validation checks before a value may land (its Python types, the
integer bounds and the float limit of the landed type). Every service derives its mapping from ``FIELD_TYPES``:
adding a field type is one row here.

Spark types are kept as Spark SQL names (``bigint``, ...): contracts do not import pyspark; the services turn
them into Spark types (``driftloop.clients.spark.spark_type``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pyarrow as pa

FieldType = Literal["string", "int", "long", "double", "float", "boolean", "timestamp"]

# Open Inference Protocol (KServe v2) tensor datatypes.
OIP_INTEGER_DATATYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
OIP_FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})
OIP_DATATYPES = OIP_INTEGER_DATATYPES | OIP_FLOAT_DATATYPES | {"BOOL", "BYTES"}


@dataclass(frozen=True)
class FieldTypeInfo:
    """One field type in every type system; the numpy dtype tells its kind (integer, float, ...) and widths."""

    name: FieldType
    avro: str | dict[str, str]
    arrow: pa.DataType
    spark: str
    numpy: np.dtype[Any]
    oip: str
    # OIP datatypes a request may send for the field (integer tensors fill number fields too).
    oip_accepted: frozenset[str]
    # Python types a decoded value may have (bool is an int in Python: validation refuses it for numbers).
    python: tuple[type, ...]

    @property
    def is_integer(self) -> bool:
        return self.numpy.kind == "i"

    @property
    def is_float(self) -> bool:
        return self.numpy.kind == "f"

    @property
    def is_number(self) -> bool:
        return self.is_integer or self.is_float

    @property
    def is_numeric(self) -> bool:
        """Range rules and mean/sum/min/max aggregates apply: numbers, and booleans (as 0 and 1)."""
        return self.is_number or self.numpy.kind == "b"

    @property
    def int_range(self) -> tuple[int, int] | None:
        """Smallest and largest value of an integer type (None for other types)."""
        if not self.is_integer:
            return None
        bounds = np.iinfo(self.numpy)
        return int(bounds.min), int(bounds.max)

    @property
    def float_max(self) -> float | None:
        """Largest finite magnitude of a float type: beyond it, Arrow would store infinity (None for others)."""
        return float(np.finfo(self.numpy).max) if self.is_float else None


_BYTES, _BOOL = frozenset({"BYTES"}), frozenset({"BOOL"})
_INTEGERS, _NUMBERS = OIP_INTEGER_DATATYPES, OIP_FLOAT_DATATYPES | OIP_INTEGER_DATATYPES
# Event times: epoch millis on the wire, UTC in Arrow, ISO 8601 strings in OIP requests.
_TIMESTAMP_MILLIS = {"type": "long", "logicalType": "timestamp-millis"}

_ROWS = (
    FieldTypeInfo(
        name="string",
        avro="string",
        arrow=pa.string(),
        spark="string",
        numpy=np.dtype("object"),
        oip="BYTES",
        oip_accepted=_BYTES,
        python=(str,),
    ),
    FieldTypeInfo(
        name="int",
        avro="int",
        arrow=pa.int32(),
        spark="int",
        numpy=np.dtype("int32"),
        oip="INT32",
        oip_accepted=_INTEGERS,
        python=(int,),
    ),
    FieldTypeInfo(
        name="long",
        avro="long",
        arrow=pa.int64(),
        spark="bigint",
        numpy=np.dtype("int64"),
        oip="INT64",
        oip_accepted=_INTEGERS,
        python=(int,),
    ),
    # An int writer promoted to a double/float reader may decode as a Python int.
    FieldTypeInfo(
        name="double",
        avro="double",
        arrow=pa.float64(),
        spark="double",
        numpy=np.dtype("float64"),
        oip="FP64",
        oip_accepted=_NUMBERS,
        python=(float, int),
    ),
    FieldTypeInfo(
        name="float",
        avro="float",
        arrow=pa.float32(),
        spark="float",
        numpy=np.dtype("float32"),
        oip="FP32",
        oip_accepted=_NUMBERS,
        python=(float, int),
    ),
    FieldTypeInfo(
        name="boolean",
        avro="boolean",
        arrow=pa.bool_(),
        spark="boolean",
        numpy=np.dtype("bool"),
        oip="BOOL",
        oip_accepted=_BOOL,
        python=(bool,),
    ),
    FieldTypeInfo(
        name="timestamp",
        avro=_TIMESTAMP_MILLIS,
        arrow=pa.timestamp("ms", tz="UTC"),
        spark="timestamp",
        numpy=np.dtype("datetime64[ms]"),
        oip="BYTES",
        oip_accepted=_BYTES,
        python=(datetime,),
    ),
)
FIELD_TYPES: dict[FieldType, FieldTypeInfo] = {row.name: row for row in _ROWS}

_SAMPLE_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def sample_column(field_type: FieldType, rows: int) -> pa.Array:
    """``rows`` made-up, valid, non-null values of ``field_type`` as its Arrow type (varied, small and positive, so
    that expressions such as ``log1p`` apply): what a warm-up puts through a job's real code path."""
    values: list[Any]
    if field_type == "string":
        values = [f"w{i % 7}" for i in range(rows)]
    elif field_type == "boolean":
        values = [i % 2 == 0 for i in range(rows)]
    elif field_type == "timestamp":
        values = [_SAMPLE_EPOCH + timedelta(seconds=i) for i in range(rows)]
    elif FIELD_TYPES[field_type].is_integer:
        values = [1 + i % 5 for i in range(rows)]
    else:
        values = [1.0 + i / 4 for i in range(rows)]
    return pa.array(values, type=FIELD_TYPES[field_type].arrow)
