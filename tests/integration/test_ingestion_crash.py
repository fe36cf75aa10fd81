"""Exact counts under ``kill -9``: two ingestion processes (``python -m driftloop.services.ingestion``) in one
consumer group split the stream's partitions; one is SIGKILLed mid-stream (its partitions move to the other in a
rebalance) and restarted (a second rebalance). Records in = landed + dead letters, exactly; no record lands
twice, and the dataset version cut afterwards holds each good record once. PostgreSQL, the real broker, the
stock Avro serializer.

The second test aims the kills at the rebalance itself (a member SIGKILLed the moment it logs that its revoke
started; a new member SIGKILLed the moment it logs its assignment) and then makes the broker deliver half of the
topic a second time (the group's committed offsets moved back) to a fresh member."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import Popen

import httpx
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from pipeline_support import AMOUNT_NOT_NEGATIVE, stream_pipeline, write_pipeline

from driftloop.clients.db import create_engine_for, migrate
from driftloop.clients.db.models import DeadLetter, LandedBatch
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.contracts.settings import Settings, settings_env
from driftloop.ops.procs import free_port, http_ready, pid_alive, spawn, stop_pid, wait_until

pytestmark = pytest.mark.integration


RECORD_ID = {"name": "id", "type": "long", "nullable": False}  # counts each record exactly
PARTITIONS = 4
TOTAL = 3000
OUT_OF_RANGE_EVERY = 50  # amount -1: dead letter out_of_range
GARBAGE_EVERY = 300  # not Avro at all: dead letter bad_magic_byte


def _start(settings: Settings, port: int, out: Path) -> Popen[bytes]:
    env = settings_env(
        settings.model_copy(update={"services": settings.services.model_copy(update={"ingestion_port": port})})
    )
    return spawn([sys.executable, "-m", "driftloop.services.ingestion"], out, env)


def _assigned(out: Path) -> list[str]:
    """Every non-empty assignment a process logged."""
    return [m for m in re.findall(r"ingestion assigned (\[.*\])", out.read_text()) if m != "[]"]


def _prepare(
    make_settings: Callable[..., Settings],
    postgres_url: str,
    tmp_path: Path,
    unique: str,
    prefix: str,
    batch_rows: int = 40,
    batch_seconds: float = 0.3,
) -> tuple[Settings, PipelineConfig, str]:
    """A stream of its own, a PostgreSQL schema of its own (migrated) and a consumer group of its own."""
    stream = f"{prefix}-{unique}"
    pipelines = tmp_path / "pipelines"
    config = stream_pipeline(
        stream,
        optional_fields=(),
        leading_fields=[RECORD_ID],
        quality=[AMOUNT_NOT_NEGATIVE],
        dataset={"landing_batch_rows": batch_rows, "landing_batch_seconds": batch_seconds},
    )
    cfg = write_pipeline(pipelines, prefix, config)
    engine = create_engine_for(postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "s{unique}"')
    engine.dispose()
    settings = make_settings(
        pipelines_dir=pipelines,
        database={"url": postgres_url + f"?options=-csearch_path%3Ds{unique}"},
        kafka={
            "bootstrap_servers": make_settings().kafka.bootstrap_servers,
            "session_timeout_ms": 2000,
            "partitions": PARTITIONS,
            "ingestion_group": f"ingestion-{unique}",
        },
        # Up to four ingestion processes run at once and one cuts at the end: four JVMs at start would only crowd
        # the two cores the crashes are timed on.
        spark={"warm_at_start": False},
    )
    migrate(settings.database_url)
    return settings, cfg, stream


def _landed_rows(engine: sa.Engine, stream: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.scalar(
                sa.select(sa.func.coalesce(sa.func.sum(LandedBatch.rows), 0)).where(LandedBatch.stream == stream)
            )
            or 0
        )


def _dead_letters(engine: sa.Engine, stream: str) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).where(DeadLetter.stream == stream)) or 0)


def test_exact_counts_when_an_ingestion_process_is_killed_mid_stream(
    make_settings: Callable[..., Settings], postgres_url: str, tmp_path: Path, unique: str
) -> None:
    settings, cfg, stream = _prepare(make_settings, postgres_url, tmp_path, unique, "crash")
    engine = create_engine_for(settings.database_url)
    ports = {"a": free_port(), "b": free_port()}
    outs = {name: tmp_path / f"ingestion-{name}.out" for name in ("a", "a2", "b")}
    procs: dict[str, Popen[bytes]] = {}

    def landed_rows() -> int:
        return _landed_rows(engine, stream)

    def dead_letters() -> int:
        return _dead_letters(engine, stream)

    try:
        procs["a"] = _start(settings, ports["a"], outs["a"])
        procs["b"] = _start(settings, ports["b"], outs["b"])
        for name in ("a", "b"):
            wait_until(lambda n=name: http_ready(f"http://127.0.0.1:{ports[n]}/healthz"), 90, f"ingestion {name}")
        # Both are in the group: the topic's 4 partitions are split between them.
        wait_until(lambda: bool(_assigned(outs["a"])) and bool(_assigned(outs["b"])), 30, "a split assignment")

        serializer = AvroSerializer(
            SchemaRegistryClient({"url": settings.schema_registry.url}), json.dumps(cfg.stream.avro_schema())
        )
        ctx = SerializationContext(cfg.stream.topic, MessageField.VALUE)
        now = datetime.now(tz=UTC)
        expected_bad = Counter[str]()
        expected_good: set[int] = set()

        def produce() -> None:
            producer = Producer(settings.kafka_config(**{"linger.ms": 5}))
            for i in range(TOTAL):
                if i % GARBAGE_EVERY == GARBAGE_EVERY - 1:
                    producer.produce(cfg.stream.topic, key=str(i).encode(), value=b"not avro %d" % i)
                    expected_bad["bad_magic_byte"] += 1
                else:
                    amount = -1.0 if i % OUT_OF_RANGE_EVERY == 0 else float(i % 500)
                    record = {
                        "id": i,
                        "customer_id": f"c{i % 97}",
                        "event_time": now - timedelta(seconds=i),
                        "amount": amount,
                        "is_fraud": i % 2,
                    }
                    producer.produce(cfg.stream.topic, key=str(i).encode(), value=serializer(record, ctx))
                    if amount < 0:
                        expected_bad["out_of_range"] += 1
                    else:
                        expected_good.add(i)
                if i % 100 == 99:
                    producer.flush(30)
                    time.sleep(0.1)  # a stream, not a burst: the kill lands in the middle of it
            assert producer.flush(30) == 0

        producing = threading.Thread(target=produce)
        producing.start()
        wait_until(lambda: landed_rows() >= 300, 60, "the first rows to land")
        os.killpg(procs["a"].pid, signal.SIGKILL)
        procs["a"].wait(timeout=10)
        killed_at = landed_rows() + dead_letters()
        assert killed_at < TOTAL, "the kill must come before the stream is fully handled"
        # b takes over a's partitions after the session timeout, mid-stream; then a comes back (another rebalance).
        time.sleep(3)
        procs["a2"] = _start(settings, ports["a"], outs["a2"])
        wait_until(lambda: http_ready(f"http://127.0.0.1:{ports['a']}/healthz"), 90, "the restarted ingestion a")
        producing.join(timeout=120)
        assert not producing.is_alive()

        wait_until(lambda: landed_rows() + dead_letters() >= TOTAL, 90, f"all {TOTAL} records to be accounted for")
        time.sleep(2.0)  # anything beyond the exact count would be a duplicate: give it the chance to appear
        assert (landed_rows(), dead_letters()) == (len(expected_good), sum(expected_bad.values()))

        with engine.connect() as conn:
            by_reason = dict(
                conn.execute(
                    sa.select(DeadLetter.reason, sa.func.count())
                    .where(DeadLetter.stream == stream)
                    .group_by(DeadLetter.reason)
                ).all()
            )
            keys = list(conn.scalars(sa.select(LandedBatch.object_key).where(LandedBatch.stream == stream)))
        assert by_reason == dict(expected_bad)
        landed_ids: list[int] = []
        for key in keys:
            landed_ids += pq.read_table(settings.object_store_path / key, columns=["id"]).column("id").to_pylist()
        assert len(landed_ids) == len(set(landed_ids)), "a record landed twice"
        assert set(landed_ids) == expected_good
        assert _assigned(outs["a2"]), "the restarted process took partitions again"

        # The dataset version holds each good record exactly once.
        response = httpx.post(f"http://127.0.0.1:{ports['b']}/v1/streams/{stream}/datasets", timeout=240)
        assert response.status_code == 200, response.text
        version = response.json()
        assert version["row_count"] == len(expected_good)
        files = sorted((settings.object_store_path / f"datasets/{stream}/v000001").rglob("*.parquet"))
        version_ids = [i for f in files for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
        assert sorted(version_ids) == sorted(expected_good)
    finally:
        for proc in procs.values():
            stop_pid(proc.pid)
        engine.dispose()
    assert not any(pid_alive(p.pid) for p in procs.values())


# --- kill -9 inside a rebalance, then the broker delivering records a second time --------------------------------

REVOKE_STARTED = "ingestion revoke started [("  # first thing _on_revoke logs, before it flushes (non-empty)
ASSIGNED = "ingestion assigned [("  # _on_assign, before any record of the new partitions is handled (non-empty)


class _LogWatch:
    """Follows one process's output from where it stands now; reads only what was appended since the last look
    (the kill must come within milliseconds of the line, and the output grows by a line per landed batch)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.position = out.stat().st_size if out.exists() else 0
        self.pending = ""
        self.seen: list[str] = []  # complete lines read since the watch started

    def new_lines(self) -> list[str]:
        """The complete lines appended since the last look."""
        if not self.out.exists():
            return []
        with self.out.open("rb") as f:
            f.seek(self.position)
            chunk = f.read()
        self.position += len(chunk)
        *complete, self.pending = (self.pending + chunk.decode(errors="replace")).split("\n")
        self.seen += complete
        return complete

    def lines(self) -> list[str]:
        """Every complete line read since the watch started."""
        self.new_lines()
        return self.seen

    def kill_on(self, proc: Popen[bytes], marker: str, timeout: float) -> str:
        """SIGKILL ``proc`` (its whole group) the moment a new line holding ``marker`` appears; returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"{self.out.name}: the process died before logging {marker!r}"
            if hit := next((line for line in self.new_lines() if marker in line), None):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                return hit
            time.sleep(0.002)
        raise AssertionError(f"{self.out.name}: no {marker!r} within {timeout:.0f}s")

    def after(self, line: str) -> list[str]:
        """The lines logged after ``line`` (everything up to the kill is in the file: logging flushes per line)."""
        lines = self.lines()
        return lines[lines.index(line) + 1 :]


def _partitions(line: str) -> set[int]:
    return {int(p) for p in re.findall(r", (\d+)\)", line)}


class _PacedStream:
    """Produces the stream's records in a paced flow until told to stop; remembers where each one landed in the
    topic (partition, offset from the delivery report) and which dead letter each bad one must give."""

    def __init__(self, settings: Settings, cfg: PipelineConfig) -> None:
        self.settings, self.topic = settings, cfg.stream.topic
        self.serializer = AvroSerializer(
            SchemaRegistryClient({"url": settings.schema_registry.url}), json.dumps(cfg.stream.avro_schema())
        )
        self.ctx = SerializationContext(self.topic, MessageField.VALUE)
        self.stop = threading.Event()
        self.good: set[int] = set()
        self.bad = Counter[str]()
        self.where: dict[int, tuple[int, int]] = {}  # id -> (partition, offset)
        self.failed: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _delivered(self, err: object, msg: Message) -> None:
        if err is not None:
            self.failed.append(str(err))
        else:
            self.where[int(msg.key() or b"-1")] = (msg.partition(), msg.offset())

    def _run(self) -> None:
        producer = Producer(self.settings.kafka_config(**{"linger.ms": 5}))
        now = datetime.now(tz=UTC)
        ids = itertools.count()
        while not self.stop.is_set():
            for i in itertools.islice(ids, 30):
                if i % GARBAGE_EVERY == GARBAGE_EVERY - 1:
                    value = b"not avro %d" % i
                    self.bad["bad_magic_byte"] += 1
                else:
                    amount = -1.0 if i % OUT_OF_RANGE_EVERY == 0 else float(i % 500)
                    record = {
                        "id": i,
                        "customer_id": f"c{i % 97}",
                        "event_time": now - timedelta(seconds=i),
                        "amount": amount,
                        "is_fraud": i % 2,
                    }
                    value = self.serializer(record, self.ctx)
                    if amount < 0:
                        self.bad["out_of_range"] += 1
                    else:
                        self.good.add(i)
                producer.produce(self.topic, key=str(i).encode(), value=value, on_delivery=self._delivered)
            producer.flush(30)
            time.sleep(0.1)  # a flow, not a burst: records keep coming through every rebalance
        assert producer.flush(30) == 0

    @property
    def total(self) -> int:
        return len(self.good) + sum(self.bad.values())

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive() and not self.failed, self.failed
        assert len(self.where) == self.total, "every record was delivered to the broker"

    def ends(self) -> dict[int, int]:
        """One past the last offset of each partition (what a group that handled everything has committed)."""
        ends = dict.fromkeys(range(PARTITIONS), 0)
        for partition, offset in self.where.values():
            ends[partition] = max(ends[partition], offset + 1)
        return ends


def test_exact_counts_when_ingestion_is_killed_inside_a_rebalance_and_the_group_is_rewound(
    make_settings: Callable[..., Settings], postgres_url: str, tmp_path: Path, unique: str
) -> None:
    """Two members a, b share the stream; a third, c, joins while records flow. a is SIGKILLed the moment its log
    shows the revoke started (inside the rebalance: before it is given partitions again). a restarts as a2 and
    is SIGKILLed the moment it is given partitions (before it has handled, landed or committed them). b and c
    take everything over. Then the group's committed offsets are moved back to the middle of each partition
    and a fresh member d re-reads that half of the topic: the broker delivers those records a second time.
    Records in = landed + dead letters, exactly; no (partition, offset) lands twice; the cut holds each good
    record once."""
    # Batches of up to a second: fewer files for the cut (Spark's time grows with them), and rows held in memory
    # when the kills land.
    settings, cfg, stream = _prepare(
        make_settings, postgres_url, tmp_path, unique, "rebalance", batch_rows=200, batch_seconds=1.0
    )
    engine = create_engine_for(settings.database_url)
    names = ("a", "b", "c", "a2", "d")
    ports = {name: free_port() for name in names}
    outs = {name: tmp_path / f"ingestion-{name}.out" for name in names}
    procs: dict[str, Popen[bytes]] = {}
    group, topic = settings.kafka.ingestion_group, cfg.stream.topic

    def start(name: str) -> _LogWatch:
        watch = _LogWatch(outs[name])
        procs[name] = _start(settings, ports[name], outs[name])
        return watch

    def accounted() -> int:
        return _landed_rows(engine, stream) + _dead_letters(engine, stream)

    def committed(consumer: Consumer) -> dict[int, int]:
        found = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return {tp.partition: tp.offset for tp in found}

    records = _PacedStream(settings, cfg)
    # Not subscribed, so never a member: it only reads and writes the group's committed offsets.
    offsets_client = Consumer(settings.kafka_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        watch_a, watch_b = start("a"), start("b")
        wait_until(lambda: bool(_assigned(outs["a"])) and bool(_assigned(outs["b"])), 90, "a split assignment")
        records.thread.start()
        wait_until(lambda: _landed_rows(engine, stream) >= 300, 60, "the first rows to land")

        # 1. c joins: a and b revoke everything (eager protocol). Kill a on its revoke line.
        watch_a.new_lines()  # a's revokes so far (b joining) are not the one awaited
        watch_c = start("c")
        revoke_line = watch_a.kill_on(procs["a"], REVOKE_STARTED, 60)
        assert records.thread.is_alive(), "records were flowing at the kill"
        after_revoke = watch_a.after(revoke_line)
        assert not any(ASSIGNED in line for line in after_revoke), "killed inside the rebalance"
        flushed = any("ingestion revoke done" in line for line in after_revoke)
        print(
            "a SIGKILLed", "after its revoke flush, before a new assignment" if flushed else "during its revoke flush"
        )

        # 2. a comes back as a2 (another rebalance); kill it the moment it is given partitions.
        watch_a2 = start("a2")
        assigned_line = watch_a2.kill_on(procs["a2"], ASSIGNED, 90)
        assert records.thread.is_alive(), "records were flowing at the kill"
        orphaned = _partitions(assigned_line)
        assert orphaned

        # 3. After a2's session times out, b and c own every partition between them; records still flowing.
        def recovered() -> bool:
            last = [[ln for ln in w.lines() if ASSIGNED in ln] for w in (watch_b, watch_c)]
            return all(last) and set().union(*(_partitions(ln[-1]) for ln in last)) == set(range(PARTITIONS))

        for watch in (watch_b, watch_c):
            watch.new_lines()
            watch.seen.clear()  # only assignments logged after a2's kill count
        wait_until(recovered, 60, "b and c to take over every partition", interval=0.05)
        handled_then = accounted()
        wait_until(lambda: accounted() >= handled_then + 300, 60, "b and c to handle records after the takeover")
        records.finish()
        wait_until(lambda: accounted() >= records.total, 90, f"all {records.total} records to be accounted for")
        assert (_landed_rows(engine, stream), _dead_letters(engine, stream)) == (
            len(records.good),
            sum(records.bad.values()),
        )

        # 4. b and c stop cleanly (landed and committed everything), then the group is rewound to mid-topic.
        # c is stopped only once it owns everything: a member leaving in the middle of a join left the group
        # stuck on the embedded broker (the next member never got an assignment).
        watch_c.new_lines()
        assert stop_pid(procs["b"].pid)
        wait_until(
            lambda: any(ASSIGNED in ln and _partitions(ln) == set(range(PARTITIONS)) for ln in watch_c.new_lines()),
            60,
            "c to own every partition once b has left",
            interval=0.05,
        )
        assert stop_pid(procs["c"].pid)
        ends = records.ends()
        assert committed(offsets_client) == ends, "a clean stop commits up to the end of every partition"
        rewound = {p: end // 2 for p, end in ends.items()}
        offsets_client.commit(offsets=[TopicPartition(topic, p, o) for p, o in rewound.items()], asynchronous=False)
        assert committed(offsets_client) == rewound
        watch_d = start("d")
        wait_until(lambda: committed(offsets_client) == ends, 90, "d to re-read up to the end of every partition")
        stats = httpx.get(f"http://127.0.0.1:{ports['d']}/v1/streams/{stream}/stats", timeout=30).json()
        since_start = stats["kafka_since_start"]
        # Every rewound record was delivered again, and none of them was landed again.
        assert since_start["received"] == sum(ends[p] - rewound[p] for p in ends)  # skipped replays included
        assert since_start["landed"] == 0
        assert not any("ingestion: cannot handle" in line for line in watch_d.lines())

        assert (_landed_rows(engine, stream), _dead_letters(engine, stream)) == (
            len(records.good),
            sum(records.bad.values()),
        )
        with engine.connect() as conn:
            by_reason = dict(
                conn.execute(
                    sa.select(DeadLetter.reason, sa.func.count())
                    .where(DeadLetter.stream == stream)
                    .group_by(DeadLetter.reason)
                ).all()
            )
            sources = list(conn.scalars(sa.select(DeadLetter.source).where(DeadLetter.stream == stream)))
            batches = conn.execute(
                sa.select(
                    LandedBatch.object_key,
                    LandedBatch.kafka_partition,
                    LandedBatch.first_offset,
                    LandedBatch.last_offset,
                ).where(LandedBatch.stream == stream)
            ).all()
        assert by_reason == dict(records.bad)
        assert len(sources) == len(set(sources)), "a record was dead-lettered twice"
        landed_at: list[tuple[int, int]] = []
        for key, partition, first, last in batches:
            ids = pq.read_table(settings.object_store_path / key, columns=["id"]).column("id").to_pylist()
            at = [records.where[i] for i in ids]
            assert all(p == partition and first <= o <= last for p, o in at), f"{key} holds records of its range"
            landed_at += at
        assert len(landed_at) == len(set(landed_at)), "a (partition, offset) landed twice"
        assert {records.where[i] for i in records.good} == set(landed_at)

        # The dataset version holds each good record exactly once.
        response = httpx.post(f"http://127.0.0.1:{ports['d']}/v1/streams/{stream}/datasets", timeout=240)
        assert response.status_code == 200, response.text
        assert response.json()["row_count"] == len(records.good)
        files = sorted((settings.object_store_path / f"datasets/{stream}/v000001").rglob("*.parquet"))
        version_ids = [i for f in files for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
        assert sorted(version_ids) == sorted(records.good)
    finally:
        records.stop.set()
        offsets_client.close()
        for proc in procs.values():
            stop_pid(proc.pid)
        engine.dispose()
    assert not any(pid_alive(p.pid) for p in procs.values())
