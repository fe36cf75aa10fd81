"""The monitor's stream engine (``services/monitor/streaming.py``, a faust agent) under ``kill -9``: records lost,
records redelivered, and seconds from the restart until every record is handled.

Starts an embedded Tansu broker of its own and an engine process in a group of its own over three topics of its
own, 4 partitions each (like the monitor's); each cycle produces ``--records`` records, kills the engine with
``kill -9`` once two thirds are handled, restarts it at once and waits until every record is handled. The handler
writes the record's id to a file and sleeps ``--handle-ms`` (the monitor's database work); it does not skip
redeliveries, so they are counted (the monitor skips them by event id). Prints a table line, or with ``--json``
the figures as one JSON object. Nothing is left running.

    .venv/bin/python bench/monitor_engine_restart.py              # about half a minute on 2 cores
    .venv/bin/python bench/monitor_engine_restart.py --cycles 10 --records 600 --json
"""

from __future__ import annotations

import argparse
import json
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

from confluent_kafka import Producer

from driftloop.contracts.settings import Settings
from driftloop.contracts.topics import Topic
from driftloop.ops.broker import EmbeddedBroker
from driftloop.ops.procs import free_port, spawn, stop_pid
from driftloop.runtime.bus import ensure_topics

# bench.monitor.promoted, ...: like the monitor's three topics.
TOPICS = [f"bench.monitor.{name}" for name in ("promoted", "predictions", "feedback")]
GROUP = "bench-monitor-faust"
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


def run_engine(bootstrap: str, home: str, out: str, handle_ms: str) -> None:
    """The engine process: the monitor's ``FaustEngine`` with a handler that records each record's id."""
    from driftloop.services.monitor.streaming import FaustEngine

    settings = bench_settings(Path(home), bootstrap)
    recorder = Recorder(Path(out), float(handle_ms) / 1000)

    class BenchEngine(FaustEngine):
        def _handle(self, topic: str, value: bytes) -> None:
            recorder.record(value)

    bus: Any = SimpleNamespace(settings=settings, consumers=[])
    topics: Any = {Topic(name, "Bench", key="model"): None for name in TOPICS}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    BenchEngine(bus, GROUP, topics).run(stop)


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


def bench(bootstrap: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = workdir / "handled"
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    sent = 0

    def start(i: int) -> Any:
        command = [sys.executable, __file__, "--engine", bootstrap, str(workdir / "home"), str(out)]
        return spawn([*command, str(args.handle_ms)], workdir / f"engine-{i}.log")

    def produce(n: int) -> None:
        nonlocal sent
        for _ in range(n):
            # Mostly predictions, some promotions and feedback; a few keys (models) as in the monitor.
            topic = TOPICS[1] if sent % 10 else TOPICS[sent % 3]
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
            raise SystemExit("nothing handled within 120 s")
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
        "engine": "faust",
        "records": args.records,
        "handle_ms": args.handle_ms,
        "session_timeout_ms": SESSION_TIMEOUT_MS,
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
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-monitor-engine-") as tmp:
        workdir = Path(tmp)
        broker = EmbeddedBroker(port=free_port(), log_path=workdir / "tansu.log")
        broker.start()
        try:
            ensure_topics(bench_settings(workdir / "home", broker.bootstrap_servers), TOPICS, partitions=4)
            r = bench(broker.bootstrap_servers, workdir, args)
        finally:
            broker.stop()
    if args.json:
        print(json.dumps(r))
        return
    print(
        f"kill -9 once two thirds of each {args.records} records are handled, {args.handle_ms:g} ms per record, "
        f"session timeout {SESSION_TIMEOUT_MS} ms"
    )
    print(
        f"{'engine':<7} {'cycles':>6} {'lost':>5} {'redelivered/kill':>17} {'catch-up s (mean/max)':>22} {'1st s':>6}"
    )
    catch_up = f"{statistics.mean(r['catch_up']):.1f} / {max(r['catch_up']):.1f}" if r["catch_up"] else "-"
    redelivered = f"{statistics.mean(r['redelivered']):.0f}" if r["redelivered"] else "-"
    print(
        f"{r['engine']:<7} {r['cycles']:>6} {r['lost']:>5} {redelivered:>17} {catch_up:>22} {r['first_record_s']:>6.1f}"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--engine":
        run_engine(*sys.argv[2:6])
    else:
        main()
