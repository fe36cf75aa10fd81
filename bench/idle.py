"""What the stack costs at rest: CPU of each component (its whole process tree: Spark's JVM, Ray's daemons and
workers, faust workers) while nothing is sent, in percent of one core.

Starts an embedded stack of its own (free ports, a temporary home; stopped by PID at the end), waits until every
component is ready and ``--settle`` seconds more (Spark warms up at start; training's local Ray starts with the service
and sleeps after ``ray.idle_shutdown_seconds``, 120 by default, without work), then reads each component's
process tree's CPU time from ``/proc`` at the start and the end of ``--seconds`` and prints the difference.

    .venv/bin/python bench/idle.py                 # about 5 minutes on 2 cores
    .venv/bin/python bench/idle.py --json          # JSON lines: each component, then {"bench": "idle", ...}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from _common import add_keep_option, bench_folder, own_stack_settings, tidy

from driftloop.ops.procs import free_port
from driftloop.ops.stack import SERVICES, Stack
from driftloop.runtime.ownedprocs import descendants

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15 of stat)


def tree_seconds(root: int) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in descendants([root])}


def command_of(pid: int, length: int = 60) -> str:
    """A process's command line, abridged (what it is: a service, Spark's JVM, a Ray worker)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    args = [w.decode(errors="replace") for w in words if w]
    if not args:
        return "?"
    return " ".join([Path(args[0]).name, *args[1:]])[:length]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds measured at rest")
    parser.add_argument(
        "--settle", type=float, default=150.0, help="seconds after ready before measuring (past Ray's idle shutdown)"
    )
    parser.add_argument(
        "--session-timeout-ms", type=int, default=None, help="consumers' kafka.session_timeout_ms (default: 6000)"
    )
    parser.add_argument("--json", action="store_true", help="JSON lines: each component and a summary")
    parser.add_argument(
        "--per-process", action="store_true", help="also each process of a component (its command, abridged)"
    )
    add_keep_option(parser)
    args = parser.parse_args(argv)

    tmp = bench_folder("driftloop-bench-idle-", keep=args.keep)
    ports = {f"{name}_port": free_port() for name in ("schemaregistry", *SERVICES)}
    # The default settings a user's stack runs with (the other benchmarks shorten the session timeout for quick
    # group joins, which makes every consumer heartbeat three times as often).
    settings = own_stack_settings(tmp, ports, session_timeout_ms=args.session_timeout_ms)
    stack = Stack(settings, on_progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    try:
        stack.up()
        time.sleep(args.settle)
        components = [c for c in stack.components() if c.name != "supervisor"]
        before = {c.name: tree_seconds(c.pid) for c in components}
        time.sleep(args.seconds)
        after = {c.name: tree_seconds(c.pid) for c in components}
        commands = {pid: command_of(pid) for tree in after.values() for pid in tree}
    finally:
        stack.down()
    results = []
    for component in components:
        start, end = before[component.name], after[component.name]
        # Processes started during the measurement count from 0; those gone count what they had used by the start.
        used = sum(end.get(pid, start.get(pid, 0.0)) - start.get(pid, 0.0) for pid in set(start) | set(end))
        row: dict[str, Any] = {
            "component": component.name,
            "processes": len(end),
            "cpu_pct": round(100 * used / args.seconds, 2),
        }
        if args.per_process:
            row["by_process"] = {
                f"{pid} {commands.get(pid, '?')}": round(100 * (end[pid] - start.get(pid, 0.0)) / args.seconds, 2)
                for pid in sorted(end)
            }
        results.append(row)
    total = round(sum(r["cpu_pct"] for r in results), 2)
    summary = {
        "bench": "idle",
        "seconds": args.seconds,
        "total_cpu_pct": total,
        "max_component": max(results, key=lambda r: r["cpu_pct"])["component"],
        "components_over_1pct": [r["component"] for r in results if r["cpu_pct"] >= 1.0],
    }
    if args.json:
        for row in results:
            print(json.dumps({"bench": "idle", **row}))
        print(json.dumps(summary))
        return 0
    print(f"the stack at rest for {args.seconds:g} s (percent of one core, each component's process tree):")
    for row in sorted(results, key=lambda r: -r["cpu_pct"]):
        print(f"  {row['component']:<15} {row['cpu_pct']:6.2f}%  ({row['processes']} processes)")
        by_process = row.get("by_process")
        for process, pct in by_process.items() if isinstance(by_process, dict) else []:
            print(f"      {pct:6.2f}%  {process}")
    print(f"  {'total':<15} {total:6.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(tidy(main()))
