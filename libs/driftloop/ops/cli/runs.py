"""``driftloop runs ...``: the training service's runs."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from driftloop.ops.cli import _common as common

runs_app = typer.Typer(help="Training runs: list, inspect, logs, abort, compare, rerun.", no_args_is_help=True)


def _flat(prefix: str, values: dict[str, Any] | None) -> dict[str, Any]:
    return {f"{prefix}.{k}": v for k, v in sorted((values or {}).items())}


@runs_app.command("list")
def runs_list(
    model: Annotated[str | None, typer.Option(help="Only this model's runs.")] = None,
    state: Annotated[str | None, typer.Option(help="pending, running, completed, failed, aborted or skipped.")] = None,
    trigger: Annotated[str | None, typer.Option(help="e.g. manual, drift, new_data, rerun.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: common.JsonOption = False,
) -> None:
    """Runs, newest first."""
    with common.client() as dl:
        runs = dl.runs(model=model, state=state, trigger=trigger, limit=limit)
    if as_json:
        common.print_json([run.raw for run in runs])
        return
    table = Table("run", "model", "state", "trigger", "dataset", "metrics", "created")
    for run in runs:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(run.metrics.items()) if v is not None)
        table.add_row(
            run.run_id,
            run.model,
            run.state,
            run.trigger,
            run.dataset_version_id or "",
            metrics,
            run.created_at.isoformat()[:19],
        )
    common.console.print(table)


@runs_app.command("show")
def runs_show(run_id: str, as_json: common.JsonOption = True) -> None:
    """Everything recorded about a run: params, metrics, trials, artifacts, provenance, resources (JSON)."""
    with common.client() as dl:
        common.print_json(dl.run(run_id).raw)


@runs_app.command("logs")
def runs_logs(run_id: str, as_json: common.JsonOption = False) -> None:
    """A run's log (live while it runs); --json: {"run_id", "log"}."""
    with common.client() as dl:
        log = dl.run_logs(run_id)
    if as_json:
        common.print_json({"run_id": run_id, "log": log})
        return
    sys.stdout.write(log)


@runs_app.command("abort")
def runs_abort(run_id: str) -> None:
    """Abort a pending or running run: its Ray trials and fit stop, their CPUs are freed."""
    with common.client() as dl:
        common.print_json(dl.abort_run(run_id).raw)


@runs_app.command("compare")
def runs_compare(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more run ids.")], as_json: common.JsonOption = False
) -> None:
    """Params and metrics of runs side by side (rows that differ are marked)."""
    with common.client() as dl:
        runs = [dl.run(run_id) for run_id in run_ids]
    rows: dict[str, list[Any]] = {}
    for index, run in enumerate(runs):
        fields = {
            "state": run.state,
            "dataset": run.dataset_version_id,
            "code": run.code_version,
            **_flat("param", run.params),
            **_flat("metric", run.metrics),
            "search.best_validation": (run.search or {}).get("best_validation_score"),
            "wall_seconds": run.resources.get("wall_seconds"),
        }
        for key, value in fields.items():
            rows.setdefault(key, [None] * len(runs))[index] = value
    if as_json:
        common.print_json({key: dict(zip(run_ids, values, strict=True)) for key, values in rows.items()})
        return
    table = Table("", *run_ids)
    for key, values in rows.items():
        differs = len({repr(v) for v in values}) > 1
        table.add_row(f"[bold]{key}[/bold]" if differs else key, *(_cell(v) for v in values))
    common.console.print(table)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


@runs_app.command("rerun")
def runs_rerun(
    run_id: str,
    wait: Annotated[bool, typer.Option(help="Wait for the rerun and compare its metrics.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 600.0,
) -> None:
    """Re-execute a completed run from its record (same data, features, params, seed) and compare metrics."""
    with common.client() as dl:
        answer = dl.rerun(run_id, reason="driftloop runs rerun")
        if not wait:
            common.print_json(answer.raw)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = dl.runs(rerun_of=run_id)
            mine = [r for r in found if r.request_id == answer.request_id]
            if mine and mine[0].state in ("completed", "failed", "aborted", "skipped"):
                original = dl.run(run_id)
                rerun = mine[0]
                deltas = {
                    k: abs(v - _or_nan(rerun.metrics.get(k))) for k, v in original.metrics.items() if v is not None
                }
                common.print_json(
                    {
                        "rerun": rerun.run_id,
                        "state": rerun.state,
                        "error": rerun.error,
                        "metrics": rerun.raw.get("metrics"),
                        "original_metrics": original.raw.get("metrics"),
                        "max_abs_difference": max(deltas.values(), default=None),
                    }
                )
                return
            time.sleep(1.0)
    common.print_json({**answer.raw, "state": "still running after the timeout"})
