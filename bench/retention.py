"""Retention purge on SQLite (the embedded default): how fast serving's purge deletes old predictions, and how
long a concurrent writer (the prediction recorder's inserts) waits while it runs (batched deletes: short locks).

    .venv/bin/python bench/retention.py [--rows 300000] [--batch 5000]

Prints rows deleted, purge seconds and rows/s, and the writer's insert latency (p50 / p99 / max, ms) during the
purge. Everything lives in a temporary folder; no process is started.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from _common import latency_ms

from driftloop.clients.db import create_engine_for, migrate
from driftloop.clients.db.models import PredictionFeedback, ServedPrediction
from driftloop.services.serving.retention import purge_predictions


def seed(engine: sa.Engine, rows: int, now: datetime) -> None:
    """Half the rows 60 days old (go), half 1 day old (stay); every tenth old row has old feedback (goes too)."""
    chunk = 20_000
    for start in range(0, rows, chunk):
        batch = []
        for i in range(start, min(rows, start + chunk)):
            age = 60 if i % 2 == 0 else 1
            batch.append(
                {
                    "request_id": f"r{i}",
                    "row_index": 0,
                    "model": "bench",
                    "version": 1,
                    "entity": f"c{i % 5000}",
                    "prediction": 0.5,
                    "predicted_at": now - timedelta(days=age, seconds=i % 3600),
                    "replica": "bench",
                }
            )
        feedback = [
            {
                "event_id": f"f{row['request_id']}",
                "model": "bench",
                "request_id": row["request_id"],
                "row_index": 0,
                "actual": 1.0,
                "received_at": row["predicted_at"] + timedelta(days=1),
            }
            for n, row in enumerate(batch)
            if n % 20 == 0
        ]
        with engine.begin() as conn:
            conn.execute(sa.insert(ServedPrediction), batch)
            conn.execute(sa.insert(PredictionFeedback), feedback)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        migrate(url)
        engine = create_engine_for(url)
        now = datetime.now(tz=UTC)
        started = time.perf_counter()
        seed(engine, args.rows, now)
        print(f"seeded {args.rows} predictions in {time.perf_counter() - started:.1f} s")

        stop = threading.Event()
        waits: list[float] = []

        def writer() -> None:
            n = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                with engine.begin() as conn:
                    conn.execute(
                        sa.insert(ServedPrediction).values(
                            request_id=f"live{n}", row_index=0, model="bench", version=1, entity=None,
                            prediction=0.1, predicted_at=datetime.now(tz=UTC), replica="live",
                        )
                    )  # fmt: skip
                waits.append(time.perf_counter() - t0)
                n += 1
                stop.wait(0.01)

        thread = threading.Thread(target=writer)
        thread.start()
        started = time.perf_counter()
        purged = purge_predictions(engine, retention_days=30, feedback_horizon_days=30, batch_rows=args.batch, now=now)
        seconds = time.perf_counter() - started
        stop.set()
        thread.join()
        deleted = purged["serving_predictions"]
        print(f"purged {purged} in {seconds:.2f} s ({deleted / seconds:,.0f} predictions/s, batch {args.batch})")
        print(f"concurrent inserts during the purge: {len(waits)}, latency ms {latency_ms(waits)}")
        engine.dispose()


if __name__ == "__main__":
    main()
