"""How ingestion and dataset cuts grow with the stream: time and peak memory at 10k, 100k and 1M records.

Starts its own embedded broker and schema registry (free ports, a temporary home). For each size it produces N
records to a fresh stream with the stock AvroSerializer, starts one ingestion process
(``python -m driftloop.services.ingestion``), times intake until landed + dead-lettered == N (from /stats), then
times an on-demand dataset cut (Spark, ``local[*]``). Peak resident memory is sampled from /proc every 0.1 s, for
the Python process and for its Spark JVM child separately: the Python peak must stay flat as N grows (micro-
batches, no whole-stream lists). Stops everything by PID.

    .venv/bin/python bench/scale.py [N ...]     # default 10000 100000 1000000; several minutes on 2 cores
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from _common import own_broker_and_registry, produce, stream_pipeline, write_pipeline

from driftloop.contracts.pipeline import load_pipeline
from driftloop.contracts.settings import Settings, settings_env
from driftloop.ops.procs import free_port, http_ready, spawn, stop_pid, wait_until
from driftloop.runtime.bus import ensure_topics


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(stat.parent.name)
            found += [child, *_children(child)]
    return found


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakMemory:
    """Samples the RSS of a process and (separately) of its descendants (the Spark JVM)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.python_peak = 0.0
        self.children_peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.python_peak = max(self.python_peak, _rss_mb(self.pid))
            self.children_peak = max(self.children_peak, sum(_rss_mb(c) for c in _children(self.pid)))
            time.sleep(0.1)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def record(i: int, now: datetime) -> dict[str, Any]:
    return {
        "customer_id": f"c{i % 10000}",
        "event_time": now - timedelta(milliseconds=i),
        "amount": -1.0 if i % 1000 == 0 else float(i % 900),
        "merchant_category": ("food", "travel", "games")[i % 3],
        "is_fraud": i % 2,
    }


def measure(settings: Settings, home: Path, stream: str, n: int) -> dict[str, float]:
    port = free_port()
    env = settings_env(
        settings.model_copy(update={"services": settings.services.model_copy(update={"ingestion_port": port})})
    )
    proc = spawn([sys.executable, "-m", "driftloop.services.ingestion"], home / f"ingestion-{stream}.out", env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ready(f"{url}/healthz"), 120, "the ingestion service")
        with PeakMemory(proc.pid) as memory:
            started = time.perf_counter()

            def done() -> bool:
                stats = httpx.get(f"{url}/v1/streams/{stream}/stats", timeout=10).json()
                return stats["landed"] + stats["dead_lettered"] >= n

            wait_until(done, 3600, f"{n} records to be ingested", interval=0.5)
            intake_s = time.perf_counter() - started
            intake_python_mb = memory.python_peak
            started = time.perf_counter()
            response = httpx.post(f"{url}/v1/streams/{stream}/datasets", timeout=3600)
            response.raise_for_status()
            cut_s = time.perf_counter() - started
        return {
            "intake_s": intake_s,
            "intake_python_mb": intake_python_mb,
            "cut_s": cut_s,
            "python_peak_mb": memory.python_peak,
            "spark_peak_mb": memory.children_peak,
            "rows": response.json()["row_count"],
        }
    finally:
        stop_pid(proc.pid)


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 100_000, 1_000_000]
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-scale-") as tmp:
        home = Path(tmp)
        pipelines = home / "pipelines"
        pipelines.mkdir()
        category = {"name": "merchant_category", "type": "string"}
        for n in sizes:
            config = stream_pipeline(f"scale-{n}", f"model-scale-{n}", [category], batch_rows=5000, batch_seconds=1)
            write_pipeline(pipelines / f"s{n}.yaml", config)
        with own_broker_and_registry(home, pipelines) as settings:
            results = []
            for n in sizes:
                cfg = load_pipeline(pipelines / f"s{n}.yaml")
                ensure_topics(settings, [cfg.stream.topic])
                t0 = time.perf_counter()
                produce(settings, cfg.stream.topic, cfg.stream.avro_schema(), n, record, flush_timeout=120)
                produced_s = time.perf_counter() - t0
                result = measure(settings, home, cfg.stream.name, n)
                results.append((n, result))
                print(
                    f"N={n:>9,}: produced {produced_s:6.1f}s | intake {result['intake_s']:7.1f}s "
                    f"({n / result['intake_s']:8,.0f} rec/s, Python peak {result['intake_python_mb']:6.0f} MB) | "
                    f"cut {result['cut_s']:6.1f}s ({result['rows']:,} rows; "
                    f"Python peak {result['python_peak_mb']:6.0f} MB, "
                    f"Spark JVM peak {result['spark_peak_mb']:6.0f} MB)",
                    flush=True,
                )
            if len(results) > 1:
                (n0, first), (n1, last) = results[0], results[-1]
                print(
                    f"growth x{n1 / n0:.0f} records: intake time x{last['intake_s'] / first['intake_s']:.1f}, "
                    f"cut time x{last['cut_s'] / first['cut_s']:.1f}, intake Python peak memory "
                    f"x{last['intake_python_mb'] / first['intake_python_mb']:.2f}"
                )


if __name__ == "__main__":
    main()
