"""CPU per logged row of serving's prediction log, in-process (robust on a shared machine: CPU time, not wall time).

A 1000-row answered request (the rows of ``bench/serve.py``: 8 float fields) goes through the real parts serving
uses: ``PredictionLog`` (events, Avro, a real producer on an embedded broker of its own) and ``PredictionRecorder``
(the ``serving_predictions`` rows, SQLite in a temporary home as in ``bench/serve.py``). Figures are process CPU
microseconds per row (every thread: librdkafka's too), per stage:

- ``log``: ``PredictionLog.flush`` (event building, encoding, handing to the producer, the recorder's queueing);
- ``reports``: the producer's delivery reports (``poll`` until every row is acknowledged);
- ``record``: ``PredictionRecorder.flush`` (the database rows).

    .venv/bin/python bench/predlog_cpu.py --requests 30 [--json]

The schema registry is left out (the writer's schema id is fixed): it is looked up once per process anyway.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import add_keep_option, bench_folder, tidy

from driftloop.clients.db import Base, create_engine_for
from driftloop.contracts.pipeline import parse_pipeline
from driftloop.contracts.settings import Settings
from driftloop.ops.broker import EmbeddedBroker
from driftloop.ops.procs import free_port
from driftloop.runtime.bus import EventBus, ensure_event_topics
from driftloop.services.serving.feedback import PredictionRecorder
from driftloop.services.serving.predlog import PredictionLog

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import MODEL, PIPELINE, request_rows


def answered(request: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": MODEL,
        "version": 1,
        "request_id": f"req-{request:06d}",
        "predictions": [i / len(rows) for i in range(len(rows))],
        "instances": rows,
        "entities": None,
        "answered_at": datetime.now(tz=UTC),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30, help="1000-row requests to log (after 3 warm-up ones)")
    parser.add_argument("--rows", type=int, default=1000, help="rows per request")
    parser.add_argument("--per-event", action="store_true", help="publish each row's event (no BusWire)")
    parser.add_argument("--json", action="store_true")
    add_keep_option(parser)
    args = parser.parse_args()

    if not args.per_event:
        from driftloop.services.serving.predlog import BusWire
    tmp = bench_folder("driftloop-bench-predlog-", keep=args.keep)
    broker = EmbeddedBroker(port=free_port(), log_path=tmp / "tansu.log")
    broker.start()
    bus = None
    try:
        settings = Settings(home=tmp / "home", kafka={"bootstrap_servers": broker.bootstrap_servers})
        ensure_event_topics(settings)
        engine = create_engine_for(settings.database_url)
        Base.metadata.create_all(engine)
        bus = EventBus(settings, producer_name="serving", engine=engine)
        bus.codec.register = lambda subject, schema: 1  # type: ignore[method-assign]  # no registry here
        producer = bus.producer
        recorder = PredictionRecorder(engine, "bench-replica")
        pipelines = {MODEL: parse_pipeline(PIPELINE)}
        prediction_log = PredictionLog(
            lambda e: bus.publish(e, wait=False, poll=False),  # type: ignore[union-attr]
            pipelines,
            recorder,
            poll=lambda timeout: producer.poll(timeout),
            # (Without the keyword for --per-event: the script also measures a checkout from before BusWire.)
            **({} if args.per_event else {"wire": BusWire(bus)}),
        )
        rows = request_rows(args.rows)
        stages: dict[str, list[float]] = {"log": [], "reports": [], "record": []}
        for request in range(args.requests + 3):
            prediction_log.submit(answered(request, rows))
            t0 = time.process_time()
            prediction_log.flush()
            t1 = time.process_time()
            while len(producer) > 0:
                producer.poll(0.01)
            t2 = time.process_time()
            recorder.flush()
            t3 = time.process_time()
            if request >= 3:
                for name, spent in (("log", t1 - t0), ("reports", t2 - t1), ("record", t3 - t2)):
                    stages[name].append(spent * 1e6 / args.rows)
        figures = {name: round(statistics.median(values), 2) for name, values in stages.items()}
        figures["total"] = round(sum(figures.values()), 2)
        print(f"CPU per logged row (us, median of {args.requests} requests of {args.rows} rows): {figures}")
        if args.json:
            summary = {
                "bench": "predlog_cpu",
                "rows": args.rows,
                "requests": args.requests,
                "per_event": args.per_event,
            }
            print(json.dumps({**summary, **figures}))
        return 0
    finally:
        if bus is not None:
            bus.close()
        broker.stop()


if __name__ == "__main__":
    sys.exit(tidy(main()))
