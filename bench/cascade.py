"""Seconds from the first drifted record to the new version serving, split by step, on the demo data.

Runs the closed-loop demo (``driftloop.ops.demo``) on its own embedded stack (free ports, a temporary home), notes
the wall-clock time the first drifted record is sent, then reads the event log: each step's time is taken from
the ``occurred_at`` of the events of the v2 cascade (drift → request → run → completed → registered → promoted
→ serving switched) and of the post-drift dataset version the trigger waited for. Stops everything it started.

    .venv/bin/python bench/cascade.py            # about 4-6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _common import add_keep_option, bench_folder, own_stack_settings, tidy
from rich.console import Console

import driftloop.ops.demo as demo_module
from driftloop.clients.db import create_engine_for
from driftloop.clients.db.models import EventRecord
from driftloop.ops.demo import MODEL, DemoScale, run_demo
from driftloop.ops.procs import free_port
from driftloop.ops.stack import SERVICES, Stack

REPO = Path(__file__).resolve().parents[1]


class TimedDemo(demo_module.Demo):
    """The demo, noting when its first drifted record is generated (it is sent right away)."""

    first_drifted_at: datetime | None = None

    def next_records(self, n: int, drifted: bool) -> list[dict[str, Any]]:
        if drifted and TimedDemo.first_drifted_at is None:
            TimedDemo.first_drifted_at = datetime.now(tz=UTC)
        return super().next_records(n, drifted)


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)  # SQLite gives naive UTC datetimes back


def steps(engine: sa.Engine, first_drifted: datetime, v2: int) -> list[tuple[str, datetime]]:
    """The milestones of the cascade that put v2 in service, in order."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(EventRecord).where(EventRecord.occurred_at >= first_drifted).order_by(EventRecord.occurred_at)
        ).all()

    def first(event_type: str, **match: Any) -> Any:
        for r in rows:
            if r.event_type == event_type and all(r.payload.get(k) == v for k, v in match.items()):
                return r
        raise SystemExit(f"no {event_type} {match} in the event log after the drift")

    promoted = first("ModelPromoted", model=MODEL, version=v2)
    in_cascade = [r for r in rows if r.cascade_id == promoted.cascade_id]
    drift = next(r for r in in_cascade if r.event_type == "DriftDetected")
    requested = next(r for r in in_cascade if r.event_type == "TrainingRequested")
    running = next(
        (r for r in in_cascade if r.event_type == "RunStateChanged" and r.payload.get("state") == "running"), None
    )
    completed = next(r for r in in_cascade if r.event_type == "TrainingCompleted")
    registered = first("ModelRegistered", model=MODEL, version=v2)
    switched = first("ServingSwitched", model=MODEL, version=v2)
    # The trigger waited for post-drift data: the first dataset version cut and materialized after the drift.
    drift_at = _aware(drift.occurred_at)
    cut = next(r for r in rows if r.event_type == "DatasetVersionCreated" and _aware(r.occurred_at) >= drift_at)
    materialized = first("FeaturesMaterialized", dataset_version_id=cut.payload["dataset_version_id"])
    milestones = [
        ("first drifted record sent", first_drifted),
        ("DriftDetected (monitor window full, tested)", drift.occurred_at),
        ("DatasetVersionCreated (post-drift data landed and cut, Spark)", cut.occurred_at),
        ("FeaturesMaterialized (Spark features, online store)", materialized.occurred_at),
        ("TrainingRequested (trigger: drift + fresh data)", requested.occurred_at),
    ]
    if running is not None:
        milestones.append(("RunStateChanged running (Ray picked it up)", running.occurred_at))
    milestones += [
        ("TrainingCompleted (fit on Ray)", completed.occurred_at),
        ("ModelRegistered (registry)", registered.occurred_at),
        ("ModelPromoted (gate: challenger vs champion, same holdout)", promoted.occurred_at),
        ("ServingSwitched (loaded, sha256 checked, hot-swapped)", switched.occurred_at),
    ]
    return [(name, _aware(at)) for name, at in milestones]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_keep_option(parser)
    args = parser.parse_args(argv)
    tmp = bench_folder("driftloop-bench-cascade-", keep=args.keep)
    ports = {f"{name}_port": free_port() for name in ("schemaregistry", *SERVICES)}
    settings = own_stack_settings(tmp, ports)
    stack_settings = settings.model_copy(update={"home": (tmp / "home" / "demo").resolve()})
    demo_log = tmp / "demo.out"
    print(f"bench/cascade.py: running the demo on its own stack (log {demo_log}) ...", flush=True)
    demo_module.Demo = TimedDemo  # type: ignore[misc]  # run_demo builds the demo from the module attribute
    started = time.monotonic()
    try:
        with demo_log.open("w") as out:
            result = run_demo(settings, console=Console(file=out, width=160), keep_running=True, scale=DemoScale())
        if result.v2 is None or TimedDemo.first_drifted_at is None:
            print(f"the demo did not complete the cascade: see {demo_log}", file=sys.stderr)
            return 1
        engine = create_engine_for(stack_settings.database_url)
        milestones = steps(engine, TimedDemo.first_drifted_at, result.v2)
    finally:
        Stack(stack_settings).down()  # stops every process the demo started, by PID
    print(f"\ncascade to v{result.v2} serving (demo data, {DemoScale().records_per_phase} records per phase):")
    print(f"  {'step':<66} {'seconds':>8} {'since drift':>12}")
    origin = milestones[0][1]
    for (_, previous), (name, at) in itertools.pairwise(milestones):
        print(f"  {name:<66} {(at - previous).total_seconds():8.2f} {(at - origin).total_seconds():12.2f}")
    total = (milestones[-1][1] - origin).total_seconds()
    print(f"  {'TOTAL first drifted record -> new version serving':<66} {total:8.2f}")
    print(f"  demo's own measure (drift phase start -> new version answers): {result.seconds_to_v2_serving:.2f}s")
    print(f"  demo wall time: {time.monotonic() - started:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(tidy(main()))
