"""The feature store's offline side with real Spark: per-entity window aggregates and the point-in-time join.

Tie rule under test: a label row at event time T sees only feature values stamped strictly before T; values
stamped exactly T (its own record, or another record of the same instant) are not visible."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from driftloop.clients.objectstore import open_object_store
from driftloop.clients.spark import spark_session, stop_spark
from driftloop.contracts import layout
from driftloop.contracts.pipeline import PipelineConfig, parse_pipeline
from driftloop.contracts.settings import Settings
from driftloop.services.features.materialize import (
    WARM_ROWS,
    aggregate_values,
    materialize,
    point_in_time_join,
    warm_materializations,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 1, tzinfo=UTC)

AGGREGATES = """
  - {name: amount_sum_1h, aggregate: sum, source: amount, window: 1h}
  - {name: amount_mean_1d, aggregate: mean, source: amount, window: 1d}
  - {name: amount_max_7d, aggregate: max, source: amount, window: 7d}
  - {name: amount_min_1h, aggregate: min, source: amount, window: 1h}
  - {name: tx_count_1h, aggregate: count, window: 1h}
  - {name: last_category_1d, aggregate: last, source: merchant_category, window: 1d, kind: categorical}
"""


def pipeline_with_aggregates(stream: str) -> PipelineConfig:
    text = (REPO / "pipelines" / "transactions.yaml").read_text().replace("name: transactions", f"name: {stream}")
    text = text.replace(
        "  - {name: merchant_category, kind: categorical}\n",
        "  - {name: merchant_category, kind: categorical}\n" + AGGREGATES.lstrip("\n"),
    )
    return parse_pipeline(text)


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    yield spark_session(Settings(), "driftloop-features-test")
    stop_spark()


def records(rows: list[tuple[str, int, float, str | None]]) -> pd.DataFrame:
    """(entity, minutes after T0, amount, category) -> raw stream rows."""
    return pd.DataFrame(
        {
            "customer_id": [r[0] for r in rows],
            "event_time": [T0 + timedelta(minutes=r[1]) for r in rows],
            "amount": [r[2] for r in rows],
            "age": 40,
            "merchant_category": [r[3] for r in rows],
            "hour": 12,
            "is_fraud": 0,
        }
    )


def test_point_in_time_join_never_sees_values_at_or_after_the_label_time(spark: SparkSession) -> None:
    pipeline = pipeline_with_aggregates("pit")
    names = [f.name for f in pipeline.aggregate_features]
    values = pd.DataFrame(
        {"customer_id": ["a", "a", "a", "b"], "event_time": [T0 + timedelta(hours=h) for h in (1, 2, 3, 1)]}
    )
    for i, name in enumerate(names):
        # Each value names its own time: 10 at 1h, 20 at 2h, 30 at 3h (+ i to tell the features apart).
        values[name] = [10.0 + i, 20.0 + i, 30.0 + i, 99.0 + i]
    values["last_category_1d"] = ["at1h", "at2h", "at3h", "b1h"]
    labels = records([("a", m, 1.0, "grocery") for m in (30, 90, 120, 121, 180, 240)] + [("b", 60, 1.0, None)])
    labels["label_id"] = range(len(labels))
    labels_df = spark.createDataFrame(
        labels[["customer_id", "event_time", "is_fraud"]].assign(**{n: None for n in names})
    )
    joined = point_in_time_join(labels_df.selectExpr("*"), spark.createDataFrame(values), pipeline).toPandas()
    joined["minutes"] = ((pd.to_datetime(joined["event_time"], utc=True) - T0).dt.total_seconds() // 60).astype(int)
    seen = {(r.customer_id, r.minutes): r.last_category_1d for r in joined.itertuples()}
    assert seen == {
        ("a", 30): None,  # before any value
        ("a", 90): "at1h",
        ("a", 120): "at1h",  # a value stamped exactly at the label's time is not visible (tie rule)
        ("a", 121): "at2h",
        ("a", 180): "at2h",  # again at equal time: the 3h value stays invisible
        ("a", 240): "at3h",
        ("b", 60): None,  # b's only value is at the label's own instant
    }
    counts = {(r.customer_id, r.minutes): r.tx_count_1h for r in joined.itertuples()}
    assert counts[("a", 30)] == 0.0 and counts[("a", 120)] == 10.0 + names.index("tx_count_1h")
    assert len(joined) == len(labels)


def brute_force_as_of(frame: pd.DataFrame, entity: str, at: pd.Timestamp, pipeline: PipelineConfig) -> dict:
    """Independent reference: aggregates over (t* - window, t*] where t* is the entity's newest event time
    strictly before ``at``."""
    own = frame[frame["customer_id"] == entity]
    earlier = own[own["event_time"] < at]
    out: dict[str, object] = {}
    for feature in pipeline.aggregate_features:
        if earlier.empty:
            out[feature.name] = 0.0 if feature.aggregate == "count" else None
            continue
        t_star = earlier["event_time"].max()
        window = own[
            (own["event_time"] <= t_star) & (own["event_time"] > t_star - timedelta(seconds=feature.window_seconds))
        ]
        if feature.aggregate == "count":
            out[feature.name] = float(len(window))
            continue
        column = window[feature.source].dropna()
        if column.empty:
            out[feature.name] = None
        elif feature.aggregate == "last":
            newest = window[window[feature.source].notna()]
            newest = newest[newest["event_time"] == newest["event_time"].max()]
            out[feature.name] = str(max(newest[feature.source]))
        else:
            out[feature.name] = float(getattr(column, feature.aggregate)())
    return out


def test_materialized_training_set_is_point_in_time_correct(
    spark: SparkSession, make_settings: Callable[..., Settings], unique: str
) -> None:
    stream = f"pit-{unique}"
    pipeline = pipeline_with_aggregates(stream)
    settings = make_settings()
    store = open_object_store(settings)
    rng = np.random.default_rng(7)
    rows = []
    for i in range(240):
        # Minutes on a coarse grid so that many records of one entity share an event time (ties).
        rows.append(
            (
                f"c{i % 6}",
                int(rng.integers(0, 60 * 30)) // 20 * 20,
                float(rng.integers(1, 500)),
                [None, "grocery", "travel", "gaming"][i % 4],
            )
        )
    # A sentinel far larger than everything, at the same instant as another record of its entity.
    rows += [("c0", 600, 1.0, "grocery"), ("c0", 600, 1_000_000.0, "travel")]
    frame = records(rows)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.set_column(1, "event_time", table.column("event_time").cast(pa.timestamp("ms", tz="UTC")))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    store.put_bytes(f"{layout.dataset_prefix(stream, 1)}part-00000.parquet", sink.getvalue().to_pybytes())
    result = materialize(spark, store, pipeline, 1, f"{stream}@v1")

    training = pq.read_table(store.local_path(layout.feature_set_prefix(stream, 1))).to_pandas()
    assert len(training) == len(frame) == result.row_count
    assert list(training.columns) == ["customer_id", "event_time", *pipeline.feature_names, "is_fraud"]
    training["event_time"] = pd.to_datetime(training["event_time"], utc=True)
    for row in training.itertuples(index=False):
        expected = brute_force_as_of(frame, row.customer_id, row.event_time, pipeline)
        for name, want in expected.items():
            got = getattr(row, name)
            if want is None:
                assert got is None or (isinstance(got, float) and np.isnan(got)), (row, name)
            elif isinstance(want, str):
                assert got == want, (row, name)
            else:
                assert got == pytest.approx(want), (row, name)
    # The sentinel never reaches a row at or before its own instant.
    at_or_before = training[(training["customer_id"] == "c0") & (training["event_time"] <= T0 + timedelta(minutes=600))]
    assert (at_or_before["amount_max_7d"].fillna(0) < 1_000_000.0).all()
    assert (training.loc[training["customer_id"] == "c0", "amount_max_7d"] == 1_000_000.0).any()

    # The offline store keeps the values with their event time; the manifest points at it.
    manifest = json.loads(store.get_bytes(layout.feature_set_manifest_key(stream, 1)))
    assert manifest["feature_view_version"] == pipeline.feature_view_version
    values = pq.read_table(store.local_path(layout.feature_values_prefix(stream, 1))).to_pandas()
    assert len(values) == frame.groupby(["customer_id", "event_time"]).ngroups
    # Online: each entity's newest values include its newest record.
    online = {r["entity"]: r for r in result.latest}
    newest_c0 = frame[frame["customer_id"] == "c0"]["event_time"].max()
    assert online["c0"]["event_time"] == newest_c0.to_pydatetime()
    assert online["c0"]["values"]["amount_max_7d"] == pytest.approx(
        frame[(frame["customer_id"] == "c0") & (frame["event_time"] > newest_c0 - timedelta(days=7))]["amount"].max()
    )


def test_aggregate_values_are_shared_by_records_of_one_instant(spark: SparkSession) -> None:
    pipeline = pipeline_with_aggregates("ties")
    frame = records([("a", 0, 5.0, "travel"), ("a", 0, 3.0, "grocery"), ("a", 61, 1.0, None), ("a", 30, 2.0, None)])
    values = aggregate_values(spark.createDataFrame(frame), pipeline).toPandas().sort_values("event_time")
    values["minutes"] = ((pd.to_datetime(values["event_time"], utc=True) - T0).dt.total_seconds() // 60).astype(int)
    got = values.set_index("minutes")
    assert list(got.index) == [0, 30, 61]
    assert got.loc[0, "tx_count_1h"] == 2 and got.loc[0, "amount_sum_1h"] == 8.0
    assert got.loc[0, "last_category_1d"] == "travel"  # peers at one instant: the greatest value
    assert got.loc[30, "tx_count_1h"] == 3 and got.loc[30, "last_category_1d"] == "travel"  # newest non-null
    # At 61 minutes the 1h window (60 min, 61] has dropped the records at minute 0.
    assert got.loc[61, "tx_count_1h"] == 2 and got.loc[61, "amount_min_1h"] == 1.0
    assert got.loc[61, "amount_max_7d"] == 5.0


# --- streaming features: online (faust worker) and offline (Spark) agree ------------------------------------


def stream_records(count: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        (
            f"e{i % 5}",
            int(rng.integers(0, 60 * 12)) // 15 * 15,
            float(rng.integers(1, 300)),
            ["grocery", "travel", None][i % 3],
        )
        for i in range(count)
    ]
    return records(rows)


def as_avro(row: dict) -> dict:
    return {**row, "event_time": row["event_time"].to_pydatetime(), "merchant_category": row["merchant_category"]}


def test_redelivered_record_is_applied_once(make_settings: Callable[..., Settings], unique: str) -> None:
    from driftloop.clients.db import migrate
    from driftloop.runtime.service import make_runtime
    from driftloop.services.features.onlinestore import open_online_store
    from driftloop.services.features.streaming import StreamAggregator

    pipeline = pipeline_with_aggregates(f"once-{unique}")
    settings = make_settings()
    migrate(settings.database_url)
    runtime = make_runtime("features", settings)
    online = open_online_store(settings, runtime.engine)
    aggregator = StreamAggregator(runtime.engine, pipeline, online)
    frame = records([("a", 0, 10.0, "grocery"), ("a", 5, 20.0, "travel")])
    first, second = (as_avro(r) for r in frame.to_dict(orient="records"))
    aggregator.apply([("t/0/0", first), ("t/0/1", second)])
    aggregator.apply([("t/0/1", second)])  # the broker delivers offset 1 again
    aggregator.apply([("t/0/0", first)])
    value = online.read(pipeline.stream.name, ["a"])["a"]
    assert value.values["tx_count_1h"] == 2.0 and value.values["amount_sum_1h"] == 30.0
    assert value.values["last_category_1d"] == "travel" and value.event_time == T0 + timedelta(minutes=5)
    assert value.updated_at is not None


def test_streaming_online_values_agree_with_offline_at_the_same_event_time(
    spark: SparkSession, make_settings: Callable[..., Settings], tmp_path: Path, unique: str
) -> None:
    import threading

    from driftloop.clients.db import migrate
    from driftloop.ops.procs import wait_until
    from driftloop.runtime.bus import ensure_topics
    from driftloop.runtime.service import make_runtime
    from driftloop.services.features.onlinestore import open_online_store
    from driftloop.services.features.streamworker import stream_worker_loop

    stream = f"live-{unique}"
    pipeline = pipeline_with_aggregates(stream)
    settings = make_settings()
    migrate(settings.database_url)
    runtime = make_runtime("features", settings)
    ensure_topics(settings, [pipeline.stream.topic], partitions=2)
    frame = stream_records(150, seed=3)
    subject, schema = f"{pipeline.stream.topic}-value", pipeline.stream.avro_schema()
    for row in frame.to_dict(orient="records"):
        runtime.bus.publish_raw(
            pipeline.stream.topic,
            runtime.bus.codec.encode(subject, schema, as_avro(row)),
            key=row["customer_id"].encode(),
        )
    runtime.bus.flush()

    # Offline first: the values at each entity's newest event time.
    offline = aggregate_values(spark.createDataFrame(frame), pipeline).toPandas()
    offline["event_time"] = pd.to_datetime(offline["event_time"], utc=True)
    newest = frame.groupby("customer_id")["event_time"].max()
    expected = {
        entity: offline[(offline["customer_id"] == entity) & (offline["event_time"] == at)].iloc[0]
        for entity, at in newest.items()
    }

    def differences() -> list[tuple]:
        found = online.read(stream, list(newest.index))
        wrong: list[tuple] = []
        for entity, at in newest.items():
            if entity not in found or found[entity].event_time != at.to_pydatetime():
                wrong.append((entity, "event_time"))
                continue
            for feature in pipeline.aggregate_features:
                got, want = found[entity].values[feature.name], expected[entity][feature.name]
                if want is None or (isinstance(want, float) and np.isnan(want)):
                    same = got is None
                elif isinstance(want, str):
                    same = got == want
                else:
                    same = got is not None and got == pytest.approx(want)
                if not same:
                    wrong.append((entity, feature.name, got, want))
        return wrong

    worker = threading.Thread(
        target=stream_worker_loop(runtime, group=f"features-stream-{unique}", pipelines=[pipeline]),
        args=(runtime.bus.stop_event,),
        daemon=True,
    )
    online = open_online_store(settings, runtime.engine)
    worker.start()
    try:
        # Records arrive out of event-time order: the online values converge once every record is applied.
        wait_until(lambda: not differences(), 120, "online values equal to the offline values")
    finally:
        runtime.bus.stop_event.set()
        worker.join(timeout=60)
    assert not worker.is_alive()
    assert differences() == []


def test_a_stream_applied_live_gets_streaming_features_without_a_restart(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str
) -> None:
    """The worker follows the service's pipeline catalog: it waits while there is no stream, starts with the first
    one applied and starts again with one agent more when a second stream is applied, keeping the first."""
    import threading

    from driftloop.clients.db import migrate
    from driftloop.ops.procs import wait_until
    from driftloop.runtime.bus import ensure_topics
    from driftloop.runtime.service import make_runtime
    from driftloop.services.features.onlinestore import open_online_store
    from driftloop.services.features.streamworker import stream_worker_loop

    def pipeline_of(name: str) -> PipelineConfig:
        cfg = pipeline_with_aggregates(name)
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": f"model-{name}"})})

    first, second = pipeline_of(f"first-{unique}"), pipeline_of(f"second-{unique}")
    (tmp_path / "pipelines").mkdir()
    settings = make_settings(pipelines_dir=tmp_path / "pipelines")
    migrate(settings.database_url)
    runtime = make_runtime("features", settings)
    assert not list(runtime.pipelines.values())
    online = open_online_store(settings, runtime.engine)

    def send(cfg: PipelineConfig, frame: pd.DataFrame) -> None:
        ensure_topics(settings, [cfg.stream.topic], partitions=1)
        subject, schema = f"{cfg.stream.topic}-value", cfg.stream.avro_schema()
        for row in frame.to_dict(orient="records"):
            encoded = runtime.bus.codec.encode(subject, schema, as_avro(row))
            runtime.bus.publish_raw(cfg.stream.topic, encoded, key=row["customer_id"].encode())
        runtime.bus.flush()

    def counted(cfg: PipelineConfig, entities: list[str]) -> float:
        found = online.read(cfg.stream.name, entities)
        return sum(float(v.values["tx_count_1h"] or 0) for v in found.values())

    worker = threading.Thread(
        target=stream_worker_loop(runtime, group=f"features-stream-{unique}"),
        args=(runtime.bus.stop_event,),
        daemon=True,
    )
    worker.start()
    try:
        runtime.pipelines.put(first)
        send(first, records([("a", 0, 10.0, "grocery"), ("a", 5, 20.0, "travel")]))
        wait_until(lambda: counted(first, ["a"]) == 2.0, 120, "the first stream's online values")

        runtime.pipelines.put(second)
        send(second, records([("b", 0, 1.0, "grocery")]))
        send(first, records([("a", 10, 5.0, "grocery")]))
        wait_until(lambda: counted(second, ["b"]) == 1.0, 120, "the stream applied later to get online values")
        wait_until(lambda: counted(first, ["a"]) == 3.0, 60, "the first stream to go on")
    finally:
        runtime.bus.stop_event.set()
        worker.join(timeout=60)
    assert not worker.is_alive()
    assert counted(first, ["a"]) == 3.0  # every record once: none applied twice across the restart


def test_the_stream_worker_rests_with_its_process_and_carries_on_when_it_wakes(
    make_settings: Callable[..., Settings], unique: str
) -> None:
    """A quiet process (``kafka.rest_after_seconds``) stops its faust worker; records sent meanwhile wait in the
    topic, and when the process wakes (the doorbell notes activity, as ``test_bus`` shows) the worker starts again
    and applies them, each once."""
    import threading

    from driftloop.clients.db import migrate
    from driftloop.ops.procs import wait_until
    from driftloop.runtime.bus import ensure_topics
    from driftloop.runtime.service import make_runtime
    from driftloop.services.features.onlinestore import open_online_store
    from driftloop.services.features.streamworker import StreamWorkerStatus, stream_worker_loop

    stream = f"rests-{unique}"
    pipeline = pipeline_with_aggregates(stream)
    settings = make_settings(kafka={**make_settings().kafka.model_dump(), "rest_after_seconds": 4.0})
    migrate(settings.database_url)
    runtime = make_runtime("features", settings)
    sender = make_runtime("ingestion", settings)  # another process: its publishing does not wake this one
    ensure_topics(settings, [pipeline.stream.topic], partitions=1)
    online = open_online_store(settings, runtime.engine)

    def send(frame: pd.DataFrame) -> None:
        subject, schema = f"{pipeline.stream.topic}-value", pipeline.stream.avro_schema()
        for row in frame.to_dict(orient="records"):
            encoded = sender.bus.codec.encode(subject, schema, as_avro(row))
            sender.bus.publish_raw(pipeline.stream.topic, encoded, key=row["customer_id"].encode())
        sender.bus.flush()

    def counted() -> float:
        found = online.read(stream, ["a"])
        return float(found["a"].values["tx_count_1h"] or 0) if "a" in found else 0.0

    status = StreamWorkerStatus()
    worker = threading.Thread(
        target=stream_worker_loop(runtime, group=f"features-stream-{unique}", pipelines=[pipeline], status=status),
        args=(runtime.bus.stop_event,),
        daemon=True,
    )
    worker.start()
    try:
        send(records([("a", 0, 10.0, "grocery")]))
        wait_until(lambda: counted() == 1.0, 120, "the first record applied")
        assert status.state == "running"
        wait_until(lambda: status.state == "resting", 60, "the worker to rest with its quiet process")
        send(records([("a", 5, 20.0, "travel")]))
        time.sleep(3)
        assert counted() == 1.0, "a resting worker takes nothing"
        runtime.bus.note_activity()  # what the doorbell does
        wait_until(lambda: counted() == 2.0, 120, "the record sent during the rest, applied after the wake")
        assert status.state == "running" and status.rests == 1
        wait_until(lambda: status.state == "resting", 60, "the worker to rest again")
    finally:
        runtime.bus.stop_event.set()
        worker.join(timeout=60)
    assert not worker.is_alive() and status.state == "stopped"
    assert counted() == 2.0  # every record once: none applied twice across the rests


def test_the_warm_up_materializes_made_up_rows_of_each_pipeline_in_a_scratch_folder(
    spark: SparkSession, tmp_path: Path
) -> None:
    plain = parse_pipeline((REPO / "pipelines" / "transactions.yaml").read_text())
    with_aggregates = pipeline_with_aggregates("tx-warm")
    results = warm_materializations(spark, tmp_path / "scratch", [plain, with_aggregates])
    assert [r.row_count for r in results] == [WARM_ROWS, WARM_ROWS]
    for result, pipeline in zip(results, (plain, with_aggregates), strict=True):
        assert result.uri.startswith(f"file://{(tmp_path / 'scratch').resolve()}/")
        # One online row per made-up entity, every feature computed (the aggregates too); nothing is written.
        assert len(result.latest) == len({f"w{i % 7}" for i in range(WARM_ROWS)})
        assert all(set(row["values"]) == set(pipeline.feature_names) for row in result.latest)


def test_python_workers_start_again_in_a_job_of_their_own(spark: SparkSession) -> None:
    # Spark stops its Python workers after a quiet minute; records arriving after a rest start them again before
    # the cut and the materialization need them (start_python_workers, on the records doorbell).
    from driftloop.clients.spark import start_python_workers
    from driftloop.ops.procs import wait_until

    tracker = spark.sparkContext.statusTracker()
    before = set(tracker.getJobIdsForGroup())
    start_python_workers()

    def succeeded() -> bool:
        new = set(tracker.getJobIdsForGroup()) - before
        infos = [tracker.getJobInfo(job) for job in new]
        return bool(new) and all(info is not None and info.status == "SUCCEEDED" for info in infos)

    wait_until(succeeded, 60, "the job starting the Python workers")
