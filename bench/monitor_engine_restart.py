"""The monitor's stream engines under ``kill -9``: records lost, records redelivered, and seconds from the restart
until every record is handled, for the faust engine (``services/monitor/streaming.py``, the default) and the bus
consumer's Kafka settings.

Starts an embedded Tansu broker of its own and, per engine, a consumer process in a group of its own over three
topics of its own, 4 partitions each (like the monitor's); each cycle produces ``--records`` records, kills the
consumer with ``kill -9`` once two thirds are handled, restarts it at once and waits until every record is handled.
The handler writes the record's id to a file and sleeps ``--handle-ms`` (the monitor's database work); it does not
skip redeliveries, so they are counted (the monitor skips them by event id). Prints one line per engine. Nothing
is left running.

    .venv/bin/python bench/monitor_engine_restart.py              # about a minute on 2 cores
    .venv/bin/python bench/monitor_engine_restart.py --cycles 10 --records 600
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from confluent_kafka import Consumer, Producer

from driftloop.contracts.settings import Settings
from driftloop.contracts.topics import Topic
from driftloop.ops.broker import EmbeddedBroker
from driftloop.ops.procs import free_port, spawn, stop_pid
from driftloop.runtime.bus import ensure_topics

# Per engine: bench.<engine>.promoted, ... (each engine reads only its own records).
TOPIC_NAMES = ["promoted", "predictions", "feedback"]
SESSION_TIMEOUT_MS = 2000


def bench_settings(home: Path, bootstrap: str) -> Settings:
    return Settings(home=home, kafka={"bootstrap_servers": bootstrap, "session_timeout_ms": SESSION_TIMEOUT_MS})


class Recorder:
    """Appends each handled record's id to a file (a line per handling, redeliveries included)."""

    def __init__(self, path: Path, handle_seconds: float) -> None:
        self.file = open(path, "a")  # noqa: SIM115 - closed when the process ends
        self.handle_seconds = handle_seconds
        self.lock = threading.Lock()

    def record(self, value: bytes) -> None:
        time.sleep(self.handle_seconds)
        with self.lock:
            self.file.write(value.decode() + "\n")
            self.file.flush()


def topics_of(engine: str) -> list[str]:
    return [f"bench.{engine}.{name}" for name in TOPIC_NAMES]


def run_faust(settings: Settings, group: str, recorder: Recorder) -> None:
    from driftloop.services.monitor.streaming import FaustEngine

    class BenchEngine(FaustEngine):
        def _handle(self, topic: str, value: bytes) -> None:
            recorder.record(value)

    bus: Any = SimpleNamespace(settings=settings, consumers=[])
    topics: Any = {Topic(name, "Bench", key="model"): None for name in topics_of("faust")}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    BenchEngine(bus, group, topics).run(stop)


def run_bus(settings: Settings, group: str, recorder: Recorder) -> None:
    """The bus consumer's loop and Kafka settings (``EventBus.consumer_config``): commit after each record."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    consumer = Consumer(
        settings.kafka_config(
            **{
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": SESSION_TIMEOUT_MS,
                "heartbeat.interval.ms": max(500, SESSION_TIMEOUT_MS // 4),
                "partition.assignment.strategy": "range,roundrobin",
            }
        )
    )
    consumer.subscribe(topics_of("bus"))
    try:
        while not stop.is_set():
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            recorder.record(message.value())
            consumer.commit(message=message, asynchronous=False)
    finally:
        consumer.close()


def consumer_main(engine: str, bootstrap: str, home: str, out: str, group: str, handle_ms: str) -> None:
    settings = bench_settings(Path(home), bootstrap)
    recorder = Recorder(Path(out), float(handle_ms) / 1000)
    (run_faust if engine == "faust" else run_bus)(settings, group, recorder)


def handled_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line]


def wait_handled(path: Path, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(set(handled_lines(path))) >= count:
            return True
        time.sleep(0.05)
    return False


def bench_engine(engine: str, bootstrap: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = workdir / f"{engine}.handled"
    group = f"bench-monitor-{engine}"
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    sent = 0
    topics = topics_of(engine)

    def start(i: int) -> Any:
        command = [sys.executable, __file__, "--consumer", engine, bootstrap, str(workdir / "home"), str(out)]
        return spawn([*command, group, str(args.handle_ms)], workdir / f"{engine}-{i}.log")

    def produce(n: int) -> None:
        nonlocal sent
        for _ in range(n):
            # Mostly predictions, some promotions and feedback; a few keys (models) as in the monitor.
            topic = topics[1] if sent % 10 else topics[sent % 3]
            producer.produce(topic, key=f"model-{sent % 3}".encode(), value=str(sent).encode())
            sent += 1
        producer.flush(10)

    started = time.monotonic()
    proc = start(0)
    catch_up: list[float] = []
    redelivered: list[int] = []
    lost = 0
    try:
        produce(args.records)
        if not wait_handled(out, 1, 120):
            raise SystemExit(f"{engine}: nothing handled within 120 s")
        first_record = time.monotonic() - started
        for cycle in range(args.cycles):
            if cycle:
                produce(args.records)
            wait_handled(out, sent - args.records // 3, 120)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)
            before = len(handled_lines(out))  # all by the killed process
            killed_at = time.monotonic()
            proc = start(cycle + 1)
            caught_up = wait_handled(out, sent, 120)
            catch_up.append(time.monotonic() - killed_at)
            lines = handled_lines(out)
            # Handlings after the restart beyond the records still unhandled at the kill: redeliveries.
            unhandled_at_kill = sent - len(set(lines[:before]))
            redelivered.append(len(lines) - before - unhandled_at_kill)
            if not caught_up:
                lost = sent - len(set(lines))
                break
    finally:
        stop_pid(proc.pid)
    return {
        "engine": engine,
        "first_record_s": first_record,
        "cycles": len(catch_up),
        "lost": lost,
        "redelivered": redelivered,
        "catch_up": catch_up,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--records", type=int, default=300, help="records produced per cycle")
    parser.add_argument("--handle-ms", type=float, default=5.0, help="time the handler takes per record")
    parser.add_argument("--engines", default="faust,bus")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-monitor-engine-") as tmp:
        workdir = Path(tmp)
        broker = EmbeddedBroker(port=free_port(), log_path=workdir / "tansu.log")
        broker.start()
        try:
            names = [topic for engine in args.engines.split(",") for topic in topics_of(engine)]
            ensure_topics(bench_settings(workdir / "home", broker.bootstrap_servers), names, partitions=4)
            results = [bench_engine(e, broker.bootstrap_servers, workdir, args) for e in args.engines.split(",")]
        finally:
            broker.stop()
    print(
        f"kill -9 once two thirds of each {args.records} records are handled, {args.handle_ms:g} ms per record, "
        f"session timeout {SESSION_TIMEOUT_MS} ms"
    )
    print(
        f"{'engine':<7} {'cycles':>6} {'lost':>5} {'redelivered/kill':>17} {'catch-up s (mean/max)':>22} {'1st s':>6}"
    )
    for r in results:
        catch_up = f"{statistics.mean(r['catch_up']):.1f} / {max(r['catch_up']):.1f}" if r["catch_up"] else "-"
        redelivered = f"{statistics.mean(r['redelivered']):.0f}" if r["redelivered"] else "-"
        print(
            f"{r['engine']:<7} {r['cycles']:>6} {r['lost']:>5} {redelivered:>17} {catch_up:>22} "
            f"{r['first_record_s']:>6.1f}"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--consumer":
        consumer_main(*sys.argv[2:8])
    else:
        main()
