"""Seconds from the last record of a new stream's first cut to its first model version answering, as a new user
meets it: a stack just started, ready and settled, then ``--rows`` records of the demo stream arrive at once.

Starts an embedded stack of its own (free ports, a temporary home, the demo pipeline with its first cut at
``--rows`` rows, so that the first dataset version holds the whole stream; stopped by PID at the end), waits until
every component is ready, Spark is warm in ingestion and features, and the stack's CPU has settled, then sends the
records through Kafka (the stock Avro serializer). Each step's time is the ``occurred_at`` of its event in the
event log (landing, cut, materialization, request, run, fit, registration, promotion, switch); the end is the first
prediction answered by version 1, asked for every 0.1 s. Training's Ray state when the records are sent is printed
(``asleep``: a fit within ``ray.local_fit_max_rows`` runs in the training service's process, without waiting for
Ray). ``--rest-after N``: then wait until training's Ray is asleep again (``ray.idle_shutdown_seconds`` after the
run) and measure training's CPU at rest for N seconds.

    .venv/bin/python bench/first_version.py            # about 3 minutes on 2 cores
    .venv/bin/python bench/first_version.py --json     # and a JSON line {"bench": "first_version", ...}
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import sqlalchemy as sa
import yaml
from _common import add_keep_option, bench_folder, own_stack_settings, tidy
from idle import tree_seconds
from rich.console import Console

from driftloop.clients.db.models import EventRecord, LandedBatch
from driftloop.contracts.settings import Settings
from driftloop.errors import DriftloopError
from driftloop.ops.demo import DEMO_PIPELINES, MODEL, Demo, DemoScale, make_records
from driftloop.ops.procs import free_port
from driftloop.ops.stack import SERVICES, Stack

SPARK_SERVICES = ("ingestion", "features")
PYSPY = "/tmp/pyspy/bin/py-spy"


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)  # SQLite gives naive UTC datetimes back


def bench_pipelines(folder: Path, rows: int) -> Path:
    """The demo pipeline with its first cut at ``rows`` rows (a window of ``rows``): one version of the whole stream."""
    config = yaml.safe_load((DEMO_PIPELINES / "transactions.yaml").read_text())
    config["dataset"].update({"cut_every_rows": rows, "window_rows": rows})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "transactions.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def wait_settled(stack: Stack, settings: Settings, max_seconds: float, cpu_below: float) -> float:
    """Seconds waited until Spark says it is warm in ingestion and features and the stack's processes use less
    than ``cpu_below`` cores over 3 s (at most ``max_seconds``)."""
    started = time.monotonic()
    deadline = started + max_seconds
    logs = [settings.log_dir / f"{name}.log" for name in SPARK_SERVICES]
    while time.monotonic() < deadline:
        if all(p.exists() and "Spark warm in" in p.read_text(errors="replace") for p in logs):
            break
        time.sleep(0.5)
    roots = [c.pid for c in stack.components()]
    while time.monotonic() < deadline:
        before = sum(sum(tree_seconds(pid).values()) for pid in roots)
        time.sleep(3.0)
        after = sum(sum(tree_seconds(pid).values()) for pid in roots)
        if (after - before) / 3.0 < cpu_below:
            break
    return time.monotonic() - started


def training_ray_state(settings: Settings) -> str | None:
    """Training's ``ray_state`` on its ``/healthz`` (None: not answered)."""
    try:
        return httpx.get(f"{settings.services.url('training')}/healthz", timeout=5).json().get("ray_state")
    except (httpx.HTTPError, ValueError):
        return None


def resting_consumers(settings: Settings) -> int:
    """How many of the services' event consumers rest (``kafka.rest_after_seconds``), from their ``/healthz``."""
    resting = 0
    for name in SERVICES:
        try:
            health = httpx.get(f"{settings.services.url(name)}/healthz", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            continue
        resting += sum(1 for c in health.get("consumers", []) if c.get("resting"))
    return resting


def training_at_rest(stack: Stack, settings: Settings, seconds: float) -> tuple[float, float]:
    """Seconds until training's Ray is asleep again, then training's CPU (its process tree, percent of one core)
    over ``seconds``."""
    started = time.monotonic()
    deadline = started + settings.ray.idle_shutdown_seconds + 120
    while training_ray_state(settings) != "asleep":
        if time.monotonic() > deadline:
            raise TimeoutError("training's Ray did not go to sleep")
        time.sleep(1.0)
    asleep_after = time.monotonic() - started
    [training] = [c for c in stack.components() if c.name == "training"]
    before = tree_seconds(training.pid)
    time.sleep(seconds)
    after = tree_seconds(training.pid)
    used = sum(after.get(pid, before.get(pid, 0.0)) - before.get(pid, 0.0) for pid in set(before) | set(after))
    return asleep_after, 100 * used / seconds


def start_profilers(stack: Stack, folder: Path) -> list[subprocess.Popen[bytes]]:
    """``py-spy record`` of each service's main process (nonblocking, idle threads included, 50 Hz)."""
    folder.mkdir(parents=True, exist_ok=True)
    options = ["--nonblocking", "--idle", "-r", "50", "-f", "raw"]
    return [
        subprocess.Popen(
            [PYSPY, "record", *options, "-o", str(folder / f"{c.name}.txt"), "-p", str(c.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for c in stack.components()
        if c.name in SERVICES
    ]


def milestones_when_logged(engine: sa.Engine, since: datetime, stream: str) -> list[tuple[str, str, datetime]]:
    """``milestones`` once the event log holds them all (each service writes its events there as the broker
    acknowledges them, in batches: a few seconds at most)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return milestones(engine, since, stream)
        except LookupError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def milestones(engine: sa.Engine, since: datetime, stream: str) -> list[tuple[str, str, datetime]]:
    """The events of the first version's cascade, in order, from the event log."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(EventRecord).where(EventRecord.occurred_at >= since).order_by(EventRecord.occurred_at)
        ).all()
        last_landed = conn.scalar(sa.select(sa.func.max(LandedBatch.landed_at)).where(LandedBatch.stream == stream))

    def first(event_type: str, **match: Any) -> Any:
        for r in rows:
            if r.event_type == event_type and all(r.payload.get(k) == v for k, v in match.items()):
                return r
        raise LookupError(f"no {event_type} {match} in the event log")

    cut = first("DatasetVersionCreated", stream=stream)
    version_id = cut.payload["dataset_version_id"]
    found = [
        ("landed", "last batch landed (Parquet, database)", _aware(last_landed)),
        ("cut", "DatasetVersionCreated (cut, Spark)", cut.occurred_at),
        ("features", "FeaturesMaterialized (Spark features, online store)", first("FeaturesMaterialized").occurred_at),
        ("trigger", "TrainingRequested (trigger: new data)", first("TrainingRequested", model=MODEL).occurred_at),
    ]
    running = next(
        (r for r in rows if r.event_type == "RunStateChanged" and r.payload.get("state") == "running"),
        None,
    )
    if running is not None:
        found.append(("run_started", "RunStateChanged running (training picked it up)", running.occurred_at))
    found += [
        ("fit", "TrainingCompleted (fit; on Ray, or here)", first("TrainingCompleted", model=MODEL).occurred_at),
        ("registered", "ModelRegistered (registry)", first("ModelRegistered", model=MODEL, version=1).occurred_at),
        ("promoted", "ModelPromoted (gate)", first("ModelPromoted", model=MODEL, version=1).occurred_at),
        ("switched", "ServingSwitched (loaded, hot-swapped)", first("ServingSwitched", model=MODEL).occurred_at),
    ]
    print(f"  first cut: {version_id} ({cut.payload['row_count']} rows)", flush=True)
    return [(key, name, _aware(at)) for key, name, at in found]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000, help="records of the stream (its first cut)")
    parser.add_argument("--settle", type=float, default=180.0, help="at most this many seconds to settle")
    parser.add_argument("--cpu-below", type=float, default=0.3, help="settled: the stack uses fewer cores than this")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for version 1 to answer")
    parser.add_argument(
        "--rest-after", type=float, default=0.0, help="then training's CPU over this many seconds once Ray sleeps"
    )
    parser.add_argument(
        "--idle-before",
        type=float,
        default=0.0,
        help="once settled, wait this many seconds more before sending (e.g. 90: the consumers rest first)",
    )
    parser.add_argument("--keep", action="store_true", help="leave the stack running (for profiling)")
    parser.add_argument(
        "--pyspy",
        type=Path,
        help="a folder: py-spy records each service (idle threads too, collapsed stacks) from send to answer",
    )
    parser.add_argument("--json", action="store_true", help="a JSON line with the figures")
    add_keep_option(parser)
    args = parser.parse_args(argv)

    tmp = bench_folder("driftloop-bench-first-", keep=args.keep)
    ports = {f"{name}_port": free_port() for name in ("schemaregistry", *SERVICES)}
    settings = own_stack_settings(tmp, ports).model_copy(
        update={"pipelines_dir": bench_pipelines(tmp / "pipelines", args.rows)}
    )
    print(f"bench/first_version.py: stack in {settings.home} (logs {settings.log_dir})", flush=True)
    stack = Stack(settings, on_progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    started = time.monotonic()
    demo: Demo | None = None
    try:
        stack.up()
        up_seconds = time.monotonic() - started
        settle_seconds = wait_settled(stack, settings, args.settle, args.cpu_below)
        print(f"  stack up in {up_seconds:.1f}s, settled {settle_seconds:.1f}s later", flush=True)
        demo = Demo(settings, Console(file=sys.stderr), DemoScale())
        demo.clock = datetime.now(tz=UTC) - timedelta(hours=1)
        records = make_records(args.rows, False, np.random.default_rng(11), demo.clock)
        profilers = start_profilers(stack, args.pyspy) if args.pyspy else []
        if args.idle_before > 0:
            time.sleep(args.idle_before)
        ray_at_send = training_ray_state(settings)
        resting_at_send = resting_consumers(settings)
        print(f"  training's Ray when the records are sent: {ray_at_send}", flush=True)
        print(f"  consumers resting when the records are sent: {resting_at_send}", flush=True)
        first_sent = datetime.now(tz=UTC)
        demo.produce(records)
        last_sent = datetime.now(tz=UTC)  # the producer's flush returned: the broker holds every record
        question = [{k: v for k, v in records[0].items() if k not in ("is_fraud", "event_time")}]
        deadline = time.monotonic() + args.timeout
        answered: datetime | None = None
        while time.monotonic() < deadline:
            try:
                if demo.platform.predict(MODEL, question).version == 1:
                    answered = datetime.now(tz=UTC)
                    break
            except DriftloopError:
                pass  # no version served yet
            time.sleep(0.1)
        for profiler in profilers:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for profiler in profilers:
            profiler.wait(60)
        if answered is None:
            print(f"version 1 did not answer within {args.timeout:.0f}s: see {settings.log_dir}", file=sys.stderr)
            return 1
        steps = [
            ("sent", "records sent (producer flushed)", last_sent),
            *milestones_when_logged(demo.engine, first_sent, "transactions"),
            ("answered", "first prediction answered by v1 (client)", answered),
        ]
        rest: dict[str, float] = {}
        if args.rest_after > 0:
            asleep_after, cpu_pct = training_at_rest(stack, settings, args.rest_after)
            rest = {"ray_asleep_after_s": round(asleep_after, 1), "training_rest_cpu_pct": round(cpu_pct, 2)}
            print(f"  training's Ray asleep {asleep_after:.0f}s after v1 answered; then {cpu_pct:.2f}% of a core")
    finally:
        if demo is not None:
            demo.close()
        if not args.keep:
            stack.down()
    print(f"\nfirst version of a {args.rows}-row stream (sent in {(last_sent - first_sent).total_seconds():.2f}s):")
    print(f"  {'step':<58} {'seconds':>8} {'since sent':>11}")
    origin = steps[0][2]
    figures: dict[str, float] = {}
    for (_, _, previous), (key, name, at) in itertools.pairwise(steps):
        seconds = (at - previous).total_seconds()
        figures[key] = round(seconds, 2)
        print(f"  {name:<58} {seconds:8.2f} {(at - origin).total_seconds():11.2f}")
    last_record = steps[1][2]  # the last landed batch holds the cut's last record
    to_serving = (answered - last_record).total_seconds()
    print(f"  {'TOTAL last record landed -> v1 answering':<58} {to_serving:8.2f}")
    print(f"  {'TOTAL records sent -> v1 answering':<58} {(answered - last_sent).total_seconds():8.2f}")
    if args.json:
        print(
            json.dumps(
                {
                    "bench": "first_version",
                    "rows": args.rows,
                    "last_record_to_serving_s": round(to_serving, 2),
                    "sent_to_serving_s": round((answered - last_sent).total_seconds(), 2),
                    "send_s": round((last_sent - first_sent).total_seconds(), 2),
                    "stack_up_s": round(up_seconds, 2),
                    "settle_s": round(settle_seconds, 2),
                    "steps_s": figures,
                    "ray_at_send": ray_at_send,
                    "idle_before_s": args.idle_before,
                    "resting_consumers_at_send": resting_at_send,
                    **rest,
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(tidy(main()))
