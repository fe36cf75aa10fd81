"""The dataset content hash depends on the rows, not on their order."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from driftloop.contracts.pipeline import StreamSpec
from driftloop.services.ingestion.content_hash import content_hash_of_table, row_slices
from driftloop.services.ingestion.landing import rows_to_table

STREAM = StreamSpec.model_validate(
    {
        "name": "hashing",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "event_time", "type": "timestamp"},
            {"name": "amount", "type": "double"},
            {"name": "count", "type": "int"},
            {"name": "flag", "type": "boolean"},
        ],
        "entity_key": "id",
        "event_time": "event_time",
        "label": "flag",
    }
)
START = datetime(2026, 1, 1, tzinfo=UTC)


def make_rows(n: int) -> list[dict]:
    return [
        {
            "id": f"c{i % 7}",
            "event_time": START + timedelta(seconds=i),
            "amount": i * 1.25 if i % 5 else None,
            "count": i,
            "flag": i % 2 == 0,
        }
        for i in range(n)
    ]


def test_hash_is_independent_of_row_order() -> None:
    rows = make_rows(200)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert content_hash_of_table(rows_to_table(rows, STREAM), STREAM) == content_hash_of_table(
        rows_to_table(shuffled, STREAM), STREAM
    )


def test_hash_is_independent_of_batching() -> None:
    table = rows_to_table(make_rows(100), STREAM)
    whole = row_slices(table, STREAM.field_names)
    halves = [row_slices(table.slice(0, 40), STREAM.field_names), row_slices(table.slice(40), STREAM.field_names)]
    assert [sum(s) for s in whole] == [sum(a) + sum(b) for a, b in zip(*halves, strict=True)]


@pytest.mark.parametrize(
    "change",
    [
        lambda rows: rows[0].update(amount=999.0),
        lambda rows: rows[3].update(amount=None),
        lambda rows: rows.pop(),
        lambda rows: rows.append(dict(rows[0])),  # a duplicate row is more data, not the same data
        lambda rows: rows[1].update(event_time=rows[1]["event_time"] + timedelta(milliseconds=1)),
    ],
)
def test_hash_changes_with_the_content(change) -> None:  # type: ignore[no-untyped-def]
    rows = make_rows(50)
    before = content_hash_of_table(rows_to_table(rows, STREAM), STREAM)
    change(rows)
    assert content_hash_of_table(rows_to_table(rows, STREAM), STREAM) != before


def test_timestamps_hash_the_same_in_millis_and_micros() -> None:
    # Spark hands timestamps to Python in microseconds; landed Parquet stores milliseconds.
    table = rows_to_table(make_rows(20), STREAM)
    micros = table.set_column(1, "event_time", table.column("event_time").cast(pa.timestamp("us", tz="UTC")))
    assert content_hash_of_table(table, STREAM) == content_hash_of_table(micros, STREAM)


def test_empty_table_has_a_stable_hash() -> None:
    empty = rows_to_table([], STREAM)
    assert content_hash_of_table(empty, STREAM) == content_hash_of_table(empty, STREAM)
    assert len(content_hash_of_table(empty, STREAM)) == 64
