"""Columnar fast path of the Kafka intake: a whole ``consume()`` batch of Confluent-framed Avro records is decoded
into Arrow columns with numpy and validated with vector expressions, instead of one Python dict per record.

Every record's bounds are known from its Kafka message, so each field is decoded for all records at once (one
read position per record, advanced field by field). The fast path only *accepts* or *defers*, it never rejects:
a record is accepted only when every step is certain to give what the per-record path gives (writer schema id
whose schema is the stream's reader schema, well-formed varints of at most 9 bytes, union index 0 or 1, booleans
0 or 1, valid UTF-8, timestamps Python can represent, the body ending exactly at the message's end, and none of
the validation rules failing). Everything else is *deferred* to the per-record path (``KafkaIntake.handle``),
which stays the single source of dead-letter reasons. A malformed body cannot pass silently: decoding is
per record from its own start, and a record whose fields do not end exactly at its message's end is deferred.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from driftloop.contracts.fieldtypes import FIELD_TYPES, FieldType
from driftloop.contracts.pipeline import PipelineConfig, StreamSpec

from .landing import arrow_schema

HEADER_BYTES = 5  # magic byte 0 + 4-byte big-endian schema id
PAD = 16  # zero bytes after the joined bodies: fixed-size reads near a record's end stay inside the buffer
MAX_VARINT_BYTES = 9  # 63 bits: longer varints (|value| >= 2**62) go to the per-record path
# Event times the per-record path turns into a datetime without trouble (1900-01-01 .. 9999-12-30).
MIN_TIMESTAMP_MS = -2_208_988_800_000
MAX_TIMESTAMP_MS = 253_402_128_000_000
EXACT_FLOAT_INT = 2**53  # integers a float64 holds exactly: range checks of longs beyond this are deferred
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class _Column:
    """One decoded field for every record of the batch (values of deferred records are meaningless)."""

    present: np.ndarray  # bool: not null
    values: np.ndarray | None = None  # numbers, booleans, epoch millis
    starts: np.ndarray | None = None  # strings: where each value's bytes start in the joined buffer
    lengths: np.ndarray | None = None  # strings: byte lengths

    @property
    def numbers(self) -> np.ndarray:
        """The values of a number, boolean or timestamp column."""
        assert self.values is not None, "a string column has no values array"
        return self.values


@dataclass
class ColumnarBatch:
    """The outcome for one batch: ``accepted[i]`` says record i may land as is; ``table`` holds the accepted
    records, in input order, with the landed Parquet schema. The other records go through the per-record path."""

    accepted: np.ndarray
    table: pa.Table


def _varint(buf: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zigzag varints at ``pos``: (values, sizes in bytes, well-formed). Short varints (the common case) cost one
    gather; longer ones only touch the records that still continue."""
    byte = buf[pos]
    raw = (byte & 0x7F).astype(np.uint64)
    sizes = np.ones(pos.shape[0], dtype=np.int64)
    more = np.flatnonzero(byte >= 0x80)
    shift = 7
    while more.size and shift < 7 * MAX_VARINT_BYTES:
        byte = buf[pos[more] + sizes[more]]
        raw[more] |= (byte & 0x7F).astype(np.uint64) << np.uint64(shift)
        sizes[more] += 1
        more = more[byte >= 0x80]
        shift += 7
    good = np.ones(pos.shape[0], dtype=bool)
    good[more] = False
    values = (raw >> np.uint64(1)).astype(np.int64) ^ -(raw & np.uint64(1)).astype(np.int64)
    return values, sizes, good


def _fixed(buf: np.ndarray, pos: np.ndarray, dtype: np.dtype[Any], size: int) -> np.ndarray:
    return np.ascontiguousarray(buf[pos[:, None] + np.arange(size)]).view(dtype).reshape(-1)


def _decode_field(
    kind: FieldType, buf: np.ndarray, pos: np.ndarray, ends: np.ndarray
) -> tuple[_Column, np.ndarray, np.ndarray]:
    """One field of type ``kind`` read at ``pos`` for every record: (column without ``present``, bytes taken,
    well-formed)."""
    n = pos.shape[0]
    if kind == "string":
        lengths, sizes, good = _varint(buf, pos)
        starts = pos + sizes
        good &= (lengths >= 0) & (starts + lengths <= ends)
        lengths = np.where(good, lengths, 0)
        return _Column(np.ones(n, dtype=bool), starts=starts, lengths=lengths), sizes + lengths, good
    if kind in ("int", "long", "timestamp"):
        values, sizes, good = _varint(buf, pos)
        if kind == "timestamp":
            good &= (values >= MIN_TIMESTAMP_MS) & (values <= MAX_TIMESTAMP_MS)
        elif (bounds := FIELD_TYPES[kind].int_range) is not None:
            good &= (values >= bounds[0]) & (values <= bounds[1])
        return _Column(np.ones(n, dtype=bool), values=values), sizes, good
    if kind in ("double", "float"):
        # Avro writes IEEE floats little-endian, as wide as the landed type.
        dtype = FIELD_TYPES[kind].numpy.newbyteorder("<")
        values = _fixed(buf, pos, dtype, dtype.itemsize)
        size = np.full(n, dtype.itemsize, dtype=np.int64)
        return _Column(np.ones(n, dtype=bool), values=values), size, np.ones(n, bool)
    if kind == "boolean":
        byte = buf[pos]
        # The per-record path reads any non-zero byte as true: bytes other than 0 and 1 are left to it.
        return _Column(np.ones(n, dtype=bool), values=byte == 1), np.ones(n, dtype=np.int64), byte <= 1
    raise AssertionError(f"unhandled field type {kind}")  # pragma: no cover - FieldType is a closed Literal


def _decode(
    values: list[bytes], stream: StreamSpec, is_fast: Callable[[int], bool]
) -> tuple[np.ndarray, dict[str, _Column], np.ndarray]:
    """(ok, columns, joined buffer): ``ok[i]`` is false where record i must take the per-record path."""
    n = len(values)
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)
    buf = np.frombuffer(b"".join(values) + bytes(PAD), dtype=np.uint8)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    ok = (lengths >= HEADER_BYTES) & (lengths <= stream.max_record_bytes)
    header = np.minimum(starts, ends)  # a record shorter than the header reads zeros from the padding, harmlessly
    ok &= buf[header] == 0
    schema_ids = (
        (buf[header + 1].astype(np.int64) << 24)
        | (buf[header + 2].astype(np.int64) << 16)
        | (buf[header + 3].astype(np.int64) << 8)
        | buf[header + 4].astype(np.int64)
    )
    seen = np.unique(schema_ids[ok])  # usually one id per batch
    ok &= np.isin(schema_ids, np.array([sid for sid in seen.tolist() if _fast(is_fast, sid)], dtype=np.int64))
    pos = np.minimum(starts + HEADER_BYTES, ends)
    columns: dict[str, _Column] = {}
    for spec in stream.fields:
        if spec.nullable:  # ["null", T]: union index 0 is null, 1 is the value
            index, sizes, good = _varint(buf, pos)
            ok &= good & ((index == 0) | (index == 1))
            present = index == 1
            pos = pos + sizes
            ok &= pos <= ends
            pos = np.minimum(pos, ends)
        else:
            present = np.ones(n, dtype=bool)
        column, advance, good = _decode_field(spec.type, buf, pos, ends)
        column.present = present
        ok &= good | ~present
        if column.lengths is not None:
            column.lengths = np.where(present, column.lengths, 0)
        pos = pos + np.where(present, advance, 0)
        ok &= pos <= ends
        pos = np.minimum(pos, ends)  # deferred records keep reading inside their own bytes
        columns[spec.name] = column
    ok &= pos == ends  # the body is exactly the record: no trailing bytes, no misalignment
    return ok, columns, buf


def _fast(is_fast: Callable[[int], bool], schema_id: int) -> bool:
    try:
        return is_fast(schema_id)
    except Exception:  # registry unreachable, unknown id: the per-record path reports or retries it
        return False


# --- validation, as vector expressions that may only err towards "defer" -------------------------------------------


def _allowed_mask(column: _Column, kind: FieldType, allowed: list[Any]) -> np.ndarray | None:
    """Rows whose value is one of ``allowed`` under validation._allowed's rules (bool never equals a number), or
    None when this type is not checked here (those rows are deferred)."""
    values, field_type = column.numbers, FIELD_TYPES[kind]
    if field_type.is_integer:
        options = [o for o in allowed if isinstance(o, int) and not isinstance(o, bool)]
        options += [int(o) for o in allowed if isinstance(o, float) and o.is_integer()]
        return np.isin(values, np.array(options, dtype=np.int64)) if options else np.zeros(len(values), dtype=bool)
    if field_type.is_float:
        exact = [float(o) for o in allowed if isinstance(o, int | float) and not isinstance(o, bool) and float(o) == o]
        return np.isin(values.astype(np.float64), np.array(exact, dtype=np.float64))
    if kind == "boolean":
        flags = {o for o in allowed if isinstance(o, bool)}
        return np.isin(values, np.array(sorted(flags), dtype=bool)) if flags else np.zeros(len(values), dtype=bool)
    return None


def _suspect(
    columns: dict[str, _Column], pipeline: PipelineConfig, now: datetime, strings: dict[str, pa.Array]
) -> np.ndarray:
    """Rows that check_record might refuse: true where it would (or where this function cannot tell)."""
    stream = pipeline.stream
    event_time = columns[stream.event_time]
    horizon = now + timedelta(seconds=stream.max_future_seconds)
    horizon_us = (horizon - _EPOCH) // timedelta(microseconds=1)
    suspect = ~event_time.present | (event_time.numbers * 1000 > horizon_us)
    for rule in pipeline.quality:
        column, kind = columns[rule.field], stream.field(rule.field).type
        if rule.rule == "not_null":
            suspect |= ~column.present
            continue
        if rule.rule == "range" and FIELD_TYPES[kind].is_number:
            values = column.numbers.astype(np.float64)
            outside = np.isnan(values)
            if rule.min is not None:
                outside |= values < rule.min
            if rule.max is not None:
                outside |= values > rule.max
            if kind == "long":  # beyond 2**53 the float comparison is not exact
                outside |= np.abs(column.numbers) >= EXACT_FLOAT_INT
            suspect |= column.present & outside
        elif rule.rule == "allowed_values" and kind == "string":
            options = pa.array([o for o in rule.values if isinstance(o, str)], type=pa.string())
            listed = np.asarray(pc.is_in(strings[rule.field], value_set=options).fill_null(True))
            suspect |= column.present & ~listed
        elif rule.rule == "allowed_values" and (inside := _allowed_mask(column, kind, rule.values)) is not None:
            suspect |= column.present & ~inside
        else:
            suspect |= column.present  # a rule this path does not evaluate: the per-record path judges
    return suspect


# --- Arrow arrays ------------------------------------------------------------------------------------------------


def _validity(present: np.ndarray) -> tuple[pa.Buffer | None, int]:
    nulls = int(present.size - np.count_nonzero(present))
    if nulls == 0:
        return None, 0
    return pa.py_buffer(np.packbits(present, bitorder="little")), nulls


def _string_array(buf: np.ndarray, column: _Column, rows: np.ndarray | slice) -> pa.Array:
    assert column.starts is not None and column.lengths is not None
    starts, lengths, present = column.starts[rows], column.lengths[rows], column.present[rows]
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    data = buf[np.repeat(starts - offsets[:-1], lengths) + np.arange(total)] if total else np.zeros(0, np.uint8)
    validity, nulls = _validity(present)
    if total < 2**31:
        return pa.StringArray.from_buffers(
            lengths.size, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data), validity, nulls
        )
    return pa.LargeStringArray.from_buffers(  # pragma: no cover - batches are far below 2 GiB
        lengths.size, pa.py_buffer(offsets), pa.py_buffer(data), validity, nulls
    ).cast(pa.string())


def _utf8_valid(array: pa.Array) -> np.ndarray | None:
    """None when every value is valid UTF-8 (the common case, one vectorised check); else a per-row mask."""
    try:
        array.validate(full=True)
        return None
    except pa.ArrowInvalid:
        binary = array.view(pa.binary())
    valid = np.ones(len(array), dtype=bool)
    for i, value in enumerate(binary.to_pylist()):
        if value is not None:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                valid[i] = False
    return valid


def _array(kind: FieldType, column: _Column, rows: np.ndarray) -> pa.Array:
    assert column.values is not None
    values, present = column.values[rows], column.present[rows]
    mask = None if present.all() else ~present
    field_type = FIELD_TYPES[kind]
    return pa.array(values.astype(field_type.numpy, copy=False), type=field_type.arrow, mask=mask)


def decode_batch(
    values: list[bytes], pipeline: PipelineConfig, is_fast: Callable[[int], bool], now: datetime
) -> ColumnarBatch:
    """Decode and validate ``values`` (Kafka message values of the stream's topic, in any order). ``is_fast(id)``
    says whether the writer schema of a schema id is the stream's reader schema (records of other ids are left to
    the per-record path, which resolves schemas)."""
    stream = pipeline.stream
    schema = arrow_schema(stream)
    if not values:
        return ColumnarBatch(np.zeros(0, dtype=bool), schema.empty_table())
    ok, columns, buf = _decode(values, stream, is_fast)
    # Strings first (for allowed_values and the UTF-8 check), over the records decoded so far.
    candidates = np.flatnonzero(ok)
    strings: dict[str, pa.Array] = {}
    for spec in stream.fields:
        if spec.type == "string":
            strings[spec.name] = _string_array(buf, columns[spec.name], candidates)
    valid = np.ones(candidates.size, dtype=bool)
    for array in strings.values():
        utf8 = _utf8_valid(array)
        if utf8 is not None:
            valid &= utf8
    # Validation over the candidates only: their values are meaningful.
    sub = {
        name: _Column(c.present[candidates], values=None if c.values is None else c.values[candidates])
        for name, c in columns.items()
    }
    valid &= ~_suspect(sub, pipeline, now, strings)
    accepted = np.zeros(len(values), dtype=bool)
    accepted[candidates[valid]] = True
    keep = np.flatnonzero(valid)
    arrays = []
    for spec in stream.fields:
        if spec.type == "string":
            array = strings[spec.name]
            arrays.append(array if keep.size == candidates.size else array.take(pa.array(keep)))
        else:
            arrays.append(_array(spec.type, columns[spec.name], candidates[keep]))
    return ColumnarBatch(accepted, pa.Table.from_arrays(arrays, schema=schema))


_ZERO_BYTES = {"string": 1, "int": 1, "long": 1, "timestamp": 1, "double": 8, "float": 4, "boolean": 1}


def warm_up(pipeline: PipelineConfig) -> None:
    """Decode one all-zero record of the stream (empty strings, zeros, nulls): numpy's and Arrow's kernels are
    loaded at start-up rather than during the first batch."""
    body = bytes(sum(1 if spec.nullable else _ZERO_BYTES[spec.type] for spec in pipeline.stream.fields))
    decode_batch([bytes(HEADER_BYTES) + body], pipeline, lambda _schema_id: True, datetime.now(tz=UTC))
