"""Dataset versions cut with the real Spark from landed Parquet: cumulative and window modes, content hash
stable under reordering (and equal to the plain-pyarrow hash), profile, parent chain, manifest, the
DatasetVersionCreated event on the topic, 409 without new data, and the automatic cut after landing; the hash and
profile computed in two Spark jobs are exactly what one job per statistic gave."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pipeline_support import InProcessService, collect_events, service_runtime, stream_pipeline, write_pipeline
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from driftloop.clients.db.models import EventRecord, LandedBatch
from driftloop.clients.objectstore import LocalObjectStore, open_object_store
from driftloop.clients.spark import spark_session, stop_spark
from driftloop.contracts.events import Event
from driftloop.contracts.layout import dataset_prefix
from driftloop.contracts.pipeline import StreamSpec
from driftloop.contracts.settings import Settings
from driftloop.contracts.topics import DATASET_VERSION_CREATED
from driftloop.services.ingestion.content_hash import SLICE_COLUMNS, combine, content_hash_of_table, slices_batch
from driftloop.services.ingestion.datasets import PARQUET_TIMESTAMP, SPARK_APP, DatasetCutter
from driftloop.services.ingestion.landing import arrow_schema, rows_to_table, table_to_parquet
from driftloop.services.ingestion.outbox import VersionOutbox
from driftloop.services.ingestion.service import build
from driftloop.services.ingestion.spark_jobs import (
    NUMERIC_TYPES,
    QUANTILE_ERROR,
    QUANTILES,
    TOP_VALUES,
    WARM_ROWS,
    read_parquet,
    select_rows,
    version_statistics,
    warm_cuts,
)

pytestmark = pytest.mark.integration

START = datetime.now(tz=UTC).replace(microsecond=0) - timedelta(days=1)


@pytest.fixture(scope="module", autouse=True)
def one_spark_session_per_module() -> Iterator[None]:
    yield
    stop_spark()


@dataclass
class Ingestion(InProcessService):
    cutter: DatasetCutter
    streams: dict[str, str]  # mode -> stream name


@pytest.fixture
def ingestion(make_settings: Callable[..., Settings], tmp_path: Path, unique: str) -> Iterator[Ingestion]:
    with open_ingestion(make_settings, tmp_path, unique) as opened:
        yield opened


@contextmanager
def open_ingestion(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str, **overrides: Any
) -> Iterator[Ingestion]:
    pipelines = tmp_path / "pipelines"
    streams = {"cumulative": f"cum-{unique}", "window": f"win-{unique}", "auto": f"auto-{unique}"}
    for kind, stream in streams.items():
        dataset = {
            "cut_every_rows": 40 if kind == "auto" else 0,
            "mode": "cumulative" if kind == "auto" else kind,
            "window_rows": 60,
            "landing_batch_rows": 25,
            "landing_batch_seconds": 0.5,
        }
        write_pipeline(pipelines, kind, stream_pipeline(stream, dataset=dataset))
    settings = make_settings(pipelines_dir=pipelines, **overrides)
    with service_runtime("ingestion", settings) as runtime:
        spec = build(runtime)
        with TestClient(spec.app) as client:
            yield Ingestion(settings, runtime, client, spec.app.state.ingestion["cutter"], streams)


def make_records(first: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "customer_id": f"c{i % 5}",
            "event_time": (START + timedelta(minutes=i)).isoformat(),
            "amount": float(i),
            "age": None if i % 10 == 0 else 20 + i % 30,
            "category": ["food", "travel", "games"][i % 3],
            "is_fraud": i % 2,
        }
        for i in range(first, first + count)
    ]


def post(ingestion: Ingestion, stream: str, records: list[dict[str, Any]]) -> None:
    # Several requests: a version is cut from several landed objects.
    for chunk in range(0, len(records), 30):
        response = ingestion.client.post(f"/v1/streams/{stream}/records", json={"records": records[chunk : chunk + 30]})
        assert response.status_code == 200, response.text
        assert not response.json()["rejected"]


def cut(ingestion: Ingestion, stream: str) -> dict[str, Any]:
    response = ingestion.client.post(f"/v1/streams/{stream}/datasets")
    assert response.status_code == 200, response.text
    return response.json()


def version_table(ingestion: Ingestion, stream: str, version: int):  # type: ignore[no-untyped-def]
    store = open_object_store(ingestion.settings)
    keys = [k for k in store.list(dataset_prefix(stream, version)) if k.endswith(".parquet")]
    assert keys, "the version has Parquet files"
    fs, root = store.arrow_filesystem()
    return pads.dataset([f"{root}/{k}" for k in keys], filesystem=fs, format="parquet").to_table()


def created_events(ingestion: Ingestion, stream: str, expected: int, group: str = "") -> list[Event]:
    return collect_events(
        ingestion.runtime.bus,
        DATASET_VERSION_CREATED.name,
        lambda event: event.payload.stream == stream,
        expected,
        group=group or f"check-{stream}",
    )


def test_cumulative_versions(ingestion: Ingestion) -> None:
    stream = ingestion.streams["cumulative"]
    none_yet = ingestion.client.post(f"/v1/streams/{stream}/datasets")
    assert none_yet.status_code == 409
    assert "no new data" in none_yet.json()["detail"]

    post(ingestion, stream, make_records(0, 100))
    v1 = cut(ingestion, stream)
    assert (v1["dataset_version_id"], v1["version"], v1["row_count"], v1["new_rows"]) == (f"{stream}@v1", 1, 100, 100)
    assert v1["parent_version_id"] is None and v1["mode"] == "cumulative"

    # The hash is the rows' hash, whatever their order: Spark's value equals pyarrow's over shuffled rows.
    table = version_table(ingestion, stream, 1)
    assert table.num_rows == 100
    shuffled = table.take(random.Random(3).sample(range(100), 100))
    stream_spec = ingestion.runtime.pipelines[f"model-{stream}"].stream
    assert content_hash_of_table(shuffled, stream_spec) == v1["content_hash"]
    from_records = rows_to_table(
        [{**r, "event_time": datetime.fromisoformat(r["event_time"])} for r in reversed(make_records(0, 100))],
        stream_spec,
    )
    assert content_hash_of_table(from_records, stream_spec) == v1["content_hash"]

    profile = v1["profile"]
    amount = profile["amount"]
    assert (amount["count"], amount["nulls"], amount["min"], amount["max"]) == (100, 0, 0.0, 99.0)
    assert amount["mean"] == pytest.approx(49.5)
    assert amount["stddev"] == pytest.approx(29.011, abs=1e-3)
    assert 45.0 <= amount["quantiles"]["0.5"] <= 55.0
    assert profile["age"]["nulls"] == 10 and profile["age"]["count"] == 90
    assert profile["category"]["distinct"] == 3
    assert {t["value"]: t["count"] for t in profile["category"]["top_values"]} == {
        "food": 34,
        "travel": 33,
        "games": 33,
    }
    assert profile["event_time"]["min"] == START.isoformat()
    assert datetime.fromisoformat(v1["max_event_time"]) == START + timedelta(minutes=99)

    again = ingestion.client.post(f"/v1/streams/{stream}/datasets")
    assert again.status_code == 409

    post(ingestion, stream, make_records(100, 50))
    v2 = cut(ingestion, stream)
    assert (v2["version"], v2["row_count"], v2["new_rows"], v2["parent_version_id"]) == (2, 150, 50, f"{stream}@v1")
    assert v2["content_hash"] != v1["content_hash"]
    assert version_table(ingestion, stream, 2).num_rows == 150

    listed = ingestion.client.get(f"/v1/streams/{stream}/datasets").json()["versions"]
    assert [v["dataset_version_id"] for v in listed] == [f"{stream}@v1", f"{stream}@v2"]
    fetched = ingestion.client.get(f"/v1/datasets/{stream}@v2").json()
    assert fetched["content_hash"] == v2["content_hash"] and fetched["uri"].endswith(dataset_prefix(stream, 2))

    store = open_object_store(ingestion.settings)
    manifest = json.loads(store.get_bytes(dataset_prefix(stream, 2) + "manifest.json"))
    assert manifest["parent_version_id"] == f"{stream}@v1" and manifest["row_count"] == 150
    assert manifest["content_hash"] == v2["content_hash"]
    with ingestion.runtime.Session() as session:
        assigned = dict(
            session.execute(
                sa.select(LandedBatch.dataset_version_id, sa.func.sum(LandedBatch.rows))
                .where(LandedBatch.stream == stream)
                .group_by(LandedBatch.dataset_version_id)
            ).all()
        )
    assert assigned == {f"{stream}@v1": 100, f"{stream}@v2": 50}

    events = created_events(ingestion, stream, 2)
    assert [e.payload.dataset_version_id for e in events] == [f"{stream}@v1", f"{stream}@v2"]
    assert events[1].payload.content_hash == v2["content_hash"] and events[1].payload.row_count == 150
    assert events[1].payload.parent_version_id == f"{stream}@v1"
    assert events[1].id == v2["event_id"]
    assert json.loads(events[0].payload.profile_json)["amount"]["max"] == 99.0
    assert datetime.fromisoformat(fetched["max_event_time"]) == START + timedelta(minutes=149)

    # A version whose announcement never reached the event log (a failed publish, a crash after the commit) is
    # announced again by the outbox's drain, with its original event id, so that consumers that saw it already skip
    # it.
    ingestion.runtime.bus.flush()
    with ingestion.runtime.Session.begin() as session:
        session.execute(sa.delete(EventRecord).where(EventRecord.event_id == v2["event_id"]))
    outbox = VersionOutbox(ingestion.runtime.Session, ingestion.runtime.bus, ingestion.runtime.pipelines)
    assert outbox.drain() == 0  # its cut may still be publishing it
    later = datetime.now(tz=UTC) + outbox.in_flight
    assert outbox.drain(later) == 1
    assert outbox.drain(later) == 0
    again_events = created_events(ingestion, stream, 3, group=f"again-{stream}")
    assert [e.id for e in again_events] == [v1["event_id"], v2["event_id"], v2["event_id"]]
    assert again_events[2].payload == events[1].payload


def test_window_versions_keep_the_newest_rows(ingestion: Ingestion) -> None:
    stream = ingestion.streams["window"]
    post(ingestion, stream, make_records(0, 100))
    v1 = cut(ingestion, stream)
    assert (v1["row_count"], v1["new_rows"], v1["mode"]) == (60, 100, "window")
    assert datetime.fromisoformat(v1["min_event_time"]) == START + timedelta(minutes=40)
    table = version_table(ingestion, stream, 1)
    assert sorted(table.column("amount").to_pylist()) == [float(i) for i in range(40, 100)]

    post(ingestion, stream, make_records(100, 30))
    v2 = cut(ingestion, stream)
    assert (v2["row_count"], v2["new_rows"], v2["parent_version_id"]) == (60, 30, f"{stream}@v1")
    table = version_table(ingestion, stream, 2)
    assert sorted(table.column("amount").to_pylist()) == [float(i) for i in range(70, 130)]
    stream_spec = ingestion.runtime.pipelines[f"model-{stream}"].stream
    assert content_hash_of_table(table.take(list(range(59, -1, -1))), stream_spec) == v2["content_hash"]


def test_automatic_cut_after_enough_rows(ingestion: Ingestion) -> None:
    stream = ingestion.streams["auto"]
    stop = threading.Event()
    thread = threading.Thread(target=ingestion.cutter.loop, args=(stop,), daemon=True)
    thread.start()
    try:
        post(ingestion, stream, make_records(0, 30))  # below cut_every_rows=40: no version
        time.sleep(1.0)
        assert ingestion.client.get(f"/v1/streams/{stream}/datasets").json()["versions"] == []
        post(ingestion, stream, make_records(30, 20))
        deadline = time.monotonic() + 120
        versions: list[dict[str, Any]] = []
        while not versions and time.monotonic() < deadline:
            versions = ingestion.client.get(f"/v1/streams/{stream}/datasets").json()["versions"]
            time.sleep(0.3)
    finally:
        stop.set()
        thread.join(timeout=120)
    assert [(v["version"], v["row_count"]) for v in versions] == [(1, 50)]


def test_cut_from_an_s3_object_store(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str, s3_endpoint: str
) -> None:
    s3 = {
        "type": "s3",
        "endpoint": s3_endpoint,
        "bucket": f"ingestion-{unique}",
        "access_key": "testing",
        "secret_key": "testing",
    }
    with open_ingestion(make_settings, tmp_path, unique, object_store=s3) as ingestion:
        stream = ingestion.streams["cumulative"]
        post(ingestion, stream, make_records(0, 70))
        v1 = cut(ingestion, stream)
        assert v1["uri"] == f"s3://ingestion-{unique}/{dataset_prefix(stream, 1)}"
        table = version_table(ingestion, stream, 1)
        assert (v1["row_count"], table.num_rows) == (70, 70)
        stream_spec = ingestion.runtime.pipelines[f"model-{stream}"].stream
        assert content_hash_of_table(table, stream_spec) == v1["content_hash"]
        store = open_object_store(ingestion.settings)
        assert store.exists(dataset_prefix(stream, 1) + "manifest.json")


def test_a_cut_on_demand_after_a_change_waits_for_enough_rows_after_it(ingestion: Ingestion) -> None:
    stream = ingestion.streams["cumulative"]  # cut_every_rows 0: only cuts on demand
    post(ingestion, stream, make_records(0, 40))
    assert cut(ingestion, stream)["version"] == 1
    change = START + timedelta(minutes=50)
    post(ingestion, stream, make_records(40, 20))  # minutes 40-59: 10 of them after the change
    body = {"since": change.isoformat(), "min_rows": 25}
    waiting = ingestion.client.post(f"/v1/streams/{stream}/datasets", json=body)
    assert waiting.status_code == 200, waiting.text
    assert waiting.json()["status"] == "waiting" and waiting.json()["rows_after_change"] == 10
    assert [v["version"] for v in ingestion.client.get(f"/v1/streams/{stream}/datasets").json()["versions"]] == [1]

    stop = threading.Event()
    thread = threading.Thread(target=ingestion.cutter.loop, args=(stop,), daemon=True)
    thread.start()
    try:
        post(ingestion, stream, make_records(60, 20))  # 30 rows after the change now: ingestion cuts by itself
        deadline = time.monotonic() + 120
        versions: list[dict[str, Any]] = []
        while len(versions) < 2 and time.monotonic() < deadline:
            versions = ingestion.client.get(f"/v1/streams/{stream}/datasets").json()["versions"]
            time.sleep(0.3)
    finally:
        stop.set()
        thread.join(timeout=120)
    assert [(v["version"], v["row_count"]) for v in versions] == [(1, 40), (2, 80)]
    assert ingestion.cutter.rows_since(stream, change) == 30
    # Asked again: nothing landed since, the newest version already holds the rows after the change.
    covered = ingestion.client.post(f"/v1/streams/{stream}/datasets", json=body).json()
    assert covered["status"] == "covered" and covered["version"]["version"] == 2


def test_a_periodic_cut_due_while_a_cut_after_a_change_waits_is_made_by_that_cut(ingestion: Ingestion) -> None:
    """Two cuts back to back (the periodic one, then the one after the change a few rows later) would delay the one
    a retrain waits for: the periodic cut waits for it, ``min_rows`` rows at most."""
    stream = ingestion.streams["auto"]  # cut_every_rows 40, cumulative

    def versions() -> list[tuple[int, int]]:
        return [(v.version, v.row_count) for v in ingestion.cutter.list_versions(stream)]

    post(ingestion, stream, make_records(0, 40))
    ingestion.cutter.maybe_cut(stream)
    assert versions() == [(1, 40)]
    post(ingestion, stream, make_records(40, 30))
    body = {"since": (START + timedelta(minutes=60)).isoformat(), "min_rows": 25}
    assert ingestion.client.post(f"/v1/streams/{stream}/datasets", json=body).json()["rows_after_change"] == 10
    post(ingestion, stream, make_records(70, 10))  # 40 new rows: a periodic cut is due; 20 after the change
    assert ingestion.cutter.maybe_cut(stream) is None and versions() == [(1, 40)]
    post(ingestion, stream, make_records(80, 5))  # 25 after the change: one cut, with every row landed
    ingestion.cutter.maybe_cut(stream)
    assert versions() == [(1, 40), (2, 85)]
    ingestion.cutter.maybe_cut(stream)
    assert versions() == [(1, 40), (2, 85)]

    # A change whose rows never come (its run gave up) holds the periodic cuts back by min_rows rows, no more.
    never = {"since": (START + timedelta(days=30)).isoformat(), "min_rows": 25}
    assert ingestion.client.post(f"/v1/streams/{stream}/datasets", json=never).json()["status"] == "waiting"
    post(ingestion, stream, make_records(85, 64))
    ingestion.cutter.maybe_cut(stream)
    assert versions() == [(1, 40), (2, 85)]
    post(ingestion, stream, make_records(149, 1))  # 65 = cut_every_rows + min_rows
    ingestion.cutter.maybe_cut(stream)
    assert versions() == [(1, 40), (2, 85), (3, 150)]


def test_a_change_seen_on_the_arrival_clock_is_placed_in_the_streams_event_time(ingestion: Ingestion) -> None:
    """A change is seen in predictions, on the platform's clock; a back-dated stream (a backfill, a replay) has no
    rows after that point in event time. With ``clock: arrival`` the change is the earliest event time of the rows
    landed from then on, and the answer says so."""
    stream = ingestion.streams["cumulative"]
    post(ingestion, stream, make_records(0, 40))  # event times hours before now
    arrived = datetime.now(tz=UTC)
    body = {"since": arrived.isoformat(), "min_rows": 25, "clock": "arrival"}
    nothing_yet = ingestion.client.post(f"/v1/streams/{stream}/datasets", json=body).json()
    assert (nothing_yet["status"], nothing_yet["since"], nothing_yet["rows_after_change"]) == ("waiting", None, 0)

    post(ingestion, stream, make_records(40, 20))  # landed after the change: event times from minute 40
    answer = ingestion.client.post(f"/v1/streams/{stream}/datasets", json=body).json()
    assert answer["status"] == "waiting" and answer["rows_after_change"] == 20
    assert datetime.fromisoformat(answer["since"]) == START + timedelta(minutes=40)
    # On the event-time clock the same point has no rows after it: what the arrival clock is for.
    assert ingestion.cutter.rows_since(stream, arrived) == 0


def test_the_warm_up_cuts_made_up_rows_of_each_stream_in_a_scratch_folder(ingestion: Ingestion, tmp_path: Path) -> None:
    spark = spark_session(ingestion.settings, SPARK_APP, parquet_timestamp=PARQUET_TIMESTAMP)
    by_stream = {cfg.stream.name: cfg for cfg in ingestion.runtime.pipelines.values()}
    cumulative, window = by_stream[ingestion.streams["cumulative"]], by_stream[ingestion.streams["window"]]
    streams = [(cumulative.stream, cumulative.dataset), (window.stream, window.dataset)]
    results = warm_cuts(spark, tmp_path / "scratch", streams)
    # Two versions each, the second on top of the first: cumulative keeps both, the window its newest 60 rows.
    assert [r.row_count for r in results] == [WARM_ROWS, 2 * WARM_ROWS, min(WARM_ROWS, 60), 60]
    assert all(r.profile["amount"]["min"] > 0 for r in results)
    assert any((tmp_path / "scratch" / "warm-cuts").rglob("*.parquet"))
    # The stream's own versions are untouched.
    assert ingestion.cutter.list_versions(cumulative.stream.name) == []


def test_reading_hundreds_of_landed_files_runs_no_spark_job(ingestion: Ingestion, tmp_path: Path) -> None:
    """A cut reads every file landed since the last one by name: listing them is the driver's work, not a Spark job
    of its own (Spark's parallel discovery above 32 paths cost a cut of 4,000 rows from 150 files a second)."""
    spark = spark_session(ingestion.settings, SPARK_APP, parquet_timestamp=PARQUET_TIMESTAMP)
    stream = ingestion.runtime.pipelines[f"model-{ingestion.streams['cumulative']}"].stream
    store = LocalObjectStore(tmp_path / "many")
    keys = []
    for i in range(120):
        records = [r | {"event_time": datetime.fromisoformat(r["event_time"])} for r in make_records(i * 2, 2)]
        table = rows_to_table(records, stream)
        keys.append(f"landed/{i:04d}.parquet")
        store.put_bytes(keys[-1], table_to_parquet(table))
    tracker = spark.sparkContext.statusTracker()
    spark.sparkContext.setJobGroup("read-landed-files", "reading landed files")
    try:
        frame = read_parquet(spark, store, stream, keys)
        jobs_to_read = list(tracker.getJobIdsForGroup("read-landed-files"))
        assert frame.count() == 240
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
    assert jobs_to_read == []


PROFILED = StreamSpec.model_validate(
    {
        "name": "profiled",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "event_time", "type": "timestamp"},
            {"name": "x", "type": "double"},
            {"name": "f", "type": "float"},
            {"name": "n", "type": "long"},
            {"name": "small", "type": "int"},
            {"name": "flag", "type": "boolean"},
            {"name": "cat", "type": "string"},
            {"name": "no_number", "type": "double"},
            {"name": "no_string", "type": "string"},
            {"name": "no_flag", "type": "boolean"},
        ],
        "entity_key": "id",
        "event_time": "event_time",
    }
)


def profiled_rows(n: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(3)
    odd_numbers = [float("nan"), float("inf"), -float("inf"), None]
    return [
        {
            "id": None if i % 13 == 0 else f"e{i % 17}",
            "event_time": START + timedelta(seconds=i % 50),
            "x": odd_numbers[i % 4] if i % 9 == 0 else float(rng.normal()),
            "f": None if i % 5 == 0 else (i % 7) / 3,
            "n": i * 1_000_000_007 if i % 3 else None,
            "small": i % 4,
            "flag": None if i % 11 == 0 else i % 3 == 0,
            "cat": ["a", "b", "c", "é", "B", ""][i % 6] if i % 4 else "z",
            "no_number": None,
            "no_string": None,
            "no_flag": None,
        }
        for i in range(n)
    ]


def one_job_per_statistic(df: DataFrame, stream: StreamSpec) -> tuple[str, int, dict[str, dict[str, Any]]]:
    """One Spark job per statistic: the hash, one aggregation, ``approxQuantile``, a ``groupBy`` per column."""
    columns = stream.field_names

    def to_slices(batches: Any) -> Any:
        for batch in batches:
            yield slices_batch(batch, columns)

    hashed = (
        df.mapInArrow(to_slices, ", ".join(f"{c} long" for c in SLICE_COLUMNS))
        .agg(F.count(F.lit(1)).alias("n"), *[F.sum(F.col(c).cast("decimal(38,0)")).alias(c) for c in SLICE_COLUMNS])
        .collect()[0]
    )
    count = int(hashed["n"])
    digest = combine(stream, count, [int(hashed[c] or 0) for c in SLICE_COLUMNS])

    def finite(value: Any) -> Any:
        return None if isinstance(value, float) and not math.isfinite(value) else value

    aggs = []
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
            aggs += [F.unix_millis(F.min(c)).alias(f"{f.name}__min"), F.unix_millis(F.max(c)).alias(f"{f.name}__max")]
        elif f.type == "string":
            aggs.append(F.countDistinct(c).alias(f"{f.name}__distinct"))
    totals = df.agg(*aggs).collect()[0].asDict()
    profile: dict[str, dict[str, Any]] = {}
    for f in stream.fields:
        entry: dict[str, Any] = {"type": f.type}
        for key, value in totals.items():
            column, _, stat = key.partition("__")
            if column == f.name:
                entry[stat] = finite(value)
        entry["nulls"] = int(entry.get("nulls") or 0)
        if f.type == "timestamp":
            for stat in ("min", "max"):
                if entry.get(stat) is not None:
                    entry[stat] = datetime.fromtimestamp(entry[stat] / 1000, tz=UTC).isoformat()
        profile[f.name] = entry
    numeric = [f.name for f in stream.fields if f.type in NUMERIC_TYPES]
    for name, values in zip(numeric, df.approxQuantile(numeric, list(QUANTILES), QUANTILE_ERROR), strict=True):
        profile[name]["quantiles"] = (
            {str(q): finite(v) for q, v in zip(QUANTILES, values, strict=True)} if values else {}
        )
    for f in stream.fields:
        if f.type in ("string", "boolean"):
            top = (
                df.where(F.col(f.name).isNotNull())
                .groupBy(f.name)
                .count()
                .orderBy(F.col("count").desc(), F.col(f.name))
                .limit(TOP_VALUES)
                .collect()
            )
            profile[f.name]["top_values"] = [{"value": r[f.name], "count": int(r["count"])} for r in top]
    return digest, count, profile


def land(store: LocalObjectStore, rows: list[dict[str, Any]], files: int, tag: str) -> list[str]:
    """``rows`` landed as ``files`` Parquet objects (at least one, maybe empty)."""
    per = max(1, math.ceil(len(rows) / files))
    keys = []
    for i in range(files):
        key = f"landed/{tag}/{i:03d}.parquet"
        store.put_bytes(
            key, table_to_parquet(pa.Table.from_pylist(rows[i * per : (i + 1) * per], arrow_schema(PROFILED)))
        )
        keys.append(key)
    return keys


@pytest.mark.parametrize(
    ("rows", "files", "mode", "window_rows"),
    [(257, 5, "cumulative", 0), (257, 5, "window", 100), (0, 1, "cumulative", 0)],
    ids=["several-partitions", "window", "no-row"],
)
def test_the_version_statistics_in_two_jobs_are_what_one_job_per_statistic_gave(
    tmp_path: Path, rows: int, files: int, mode: str, window_rows: int
) -> None:
    """The hash and profile of a version, computed in two Spark jobs, are exactly what one job per statistic gave
    (the computation before they were merged, ``one_job_per_statistic``): with nulls, NaN, infinities, booleans,
    columns without a value, no row, one partition and several."""
    spark = spark_session(Settings(), SPARK_APP, parquet_timestamp=PARQUET_TIMESTAMP)
    store = LocalObjectStore(tmp_path)
    new = read_parquet(spark, store, PROFILED, land(store, profiled_rows(rows), files, "new"))
    version = select_rows(read_parquet(spark, store, PROFILED, []), new, PROFILED, mode, window_rows).cache()
    try:
        digest, count, profile = version_statistics(version, PROFILED)
        expected_digest, expected_count, expected_profile = one_job_per_statistic(version, PROFILED)
    finally:
        version.unpersist()
    assert (digest, count) == (expected_digest, expected_count)
    assert count == (min(rows, window_rows) if mode == "window" else rows)
    # Identical down to the order of the keys: the profile is stored and published as JSON.
    assert json.dumps(profile) == json.dumps(expected_profile)
    if rows:  # the figures are there to compare
        assert profile["cat"]["distinct"] == 7 and profile["no_string"]["distinct"] == 0
        assert profile["flag"]["top_values"][0]["value"] in (True, False)
        assert profile["x"]["quantiles"] and profile["no_number"]["quantiles"] == {}
