"""``driftloop up | down | status | demo | prometheus-config``: the embedded stack."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from driftloop.ops.cli import _common as common

app = typer.Typer()


@app.command()
def up(
    prometheus: Annotated[
        bool | None,
        typer.Option(
            "--prometheus/--no-prometheus",
            help="Also start Prometheus scraping every service (config and data in <home>/prometheus). "
            "Default: the prometheus.enabled setting.",
        ),
    ] = None,
    prometheus_port: Annotated[
        int | None, typer.Option(help="Port of that Prometheus. Default: the prometheus.port setting (9090).")
    ] = None,
) -> None:
    """Start the broker, the schema registry and every service; wait until all are healthy."""
    from driftloop.ops.stack import Stack

    stack = Stack(common.settings(), on_progress=lambda m: common.console.print(f"  {m}"))
    components = stack.up(prometheus=prometheus, prometheus_port=prometheus_port)
    _status_table(stack.status())
    common.console.print(
        f"[green]driftloop is up[/green] ({len(components)} components). Logs: {stack.settings.log_dir}"
    )


@app.command("prometheus-config")
def prometheus_config_cmd(
    out: Annotated[Path | None, typer.Option("--out", help="Write it to this file instead of stdout.")] = None,
) -> None:
    """Prometheus config scraping every service where these settings run them (from infra/prometheus)."""
    import yaml

    from driftloop.ops.stack import prometheus_config, write_prometheus_config

    config = prometheus_config(common.settings())
    if out is None:
        sys.stdout.write(yaml.safe_dump(config, sort_keys=False))
    else:
        common.console.print(f"wrote {write_prometheus_config(out, config)}")


@app.command()
def down() -> None:
    """Stop every component the last `driftloop up` started, by PID."""
    from driftloop.ops.stack import Stack

    stack = Stack(common.settings(), on_progress=lambda m: common.console.print(f"  {m}"))
    stopped = stack.down()
    common.console.print(f"stopped {len(stopped)} components" if stopped else "nothing was running")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Each component: name, pid, url, health, log file."""
    from driftloop.ops.stack import Stack

    stack = Stack(common.settings())
    rows = stack.status()
    keys = ("name", "pid", "url", "alive", "healthy", "ready", "restarts", "crashing", "log")
    if as_json:
        common.print_json([{k: r[k] for k in keys} for r in rows])
        return
    if not rows:
        common.console.print("no stack is running here (start one with `driftloop up`)")
        return
    _status_table(rows)
    supervisor = stack.supervisor_status()
    if supervisor["pid"] is not None:
        state = "[green]running[/green]" if supervisor["alive"] else "[red]not running[/red]"
        common.console.print(f"supervisor: {state} (pid {supervisor['pid']}, log {supervisor['log']})")


def _status_table(rows: list[dict[str, Any]]) -> None:
    table = Table("component", "pid", "url", "health", "restarts", "log")
    for r in rows:
        health = "[green]ready[/green]" if r["ready"] else ("healthy" if r["healthy"] else "[red]down[/red]")
        if r.get("crashing"):
            health = "[red]crashing (not restarted)[/red]"
        table.add_row(r["name"], str(r["pid"]), r["url"], health, str(r.get("restarts", 0)), r["log"])
    common.console.print(table)


@app.command()
def demo(
    keep_running: Annotated[bool, typer.Option(help="Leave the stack up at the end.")] = False,
) -> None:
    """Run the closed-loop demo on the embedded stack: train, serve, drift, retrain, redeploy."""
    from driftloop.ops.demo import run_demo

    result = run_demo(common.settings(), console=common.console, keep_running=keep_running)
    raise typer.Exit(0 if result.ok else 1)
