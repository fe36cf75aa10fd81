"""The ``driftloop`` command line: run the embedded stack, inspect datasets, models and cascades."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from driftloop.errors import DriftloopError
from driftloop.settings import Settings, load_settings

app = typer.Typer(
    help="driftloop: continuous training driven by the data stream.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
dataset_app = typer.Typer(help="Dataset versions of a stream.", no_args_is_help=True)
models_app = typer.Typer(help="Models in the registry.", no_args_is_help=True)
pipeline_app = typer.Typer(help="Pipeline config files.", no_args_is_help=True)
events_app = typer.Typer(help="The event log.", no_args_is_help=True)
schemas_app = typer.Typer(help="Event schemas and their compatibility lock.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters of a stream: list by reason, replay once fixed.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(dataset_app, name="dataset")
app.add_typer(models_app, name="models")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(events_app, name="events")
app.add_typer(schemas_app, name="schemas")
app.add_typer(dlq_app, name="dlq")

console = Console()
err_console = Console(stderr=True)


def _settings() -> Settings:
    return load_settings()


def _call(service: str, method: str, path: str, **kwargs: Any) -> Any:
    from driftloop.security import auth_headers

    settings = _settings()
    url = settings.services.url(service) + path
    headers = {**auth_headers(settings), **kwargs.pop("headers", {})}
    try:
        response = httpx.request(method, url, timeout=kwargs.pop("timeout", 60.0), headers=headers, **kwargs)
    except httpx.ConnectError:
        raise DriftloopError(
            f"the {service} service does not answer at {url}: is the stack up (`driftloop up`)?"
        ) from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise DriftloopError(f"{service} answered {response.status_code}: {detail}")
    return response.json()


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# --- stack ---------------------------------------------------------------------------------------------------


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
    from driftloop.stack import Stack

    stack = Stack(_settings(), on_progress=lambda m: console.print(f"  {m}"))
    components = stack.up(prometheus=prometheus, prometheus_port=prometheus_port)
    _status_table(stack.status())
    console.print(f"[green]driftloop is up[/green] ({len(components)} components). Logs: {stack.settings.log_dir}")


@app.command("prometheus-config")
def prometheus_config_cmd(
    out: Annotated[Path | None, typer.Option("--out", help="Write it to this file instead of stdout.")] = None,
) -> None:
    """Prometheus config scraping every service where these settings run them (from infra/prometheus)."""
    import yaml

    from driftloop.stack import prometheus_config, write_prometheus_config

    config = prometheus_config(_settings())
    if out is None:
        sys.stdout.write(yaml.safe_dump(config, sort_keys=False))
    else:
        console.print(f"wrote {write_prometheus_config(out, config)}")


@app.command()
def down() -> None:
    """Stop every component the last `driftloop up` started, by PID."""
    from driftloop.stack import Stack

    stack = Stack(_settings(), on_progress=lambda m: console.print(f"  {m}"))
    stopped = stack.down()
    console.print(f"stopped {len(stopped)} components" if stopped else "nothing was running")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Each component: name, pid, url, health, log file."""
    from driftloop.stack import Stack

    rows = Stack(_settings()).status()
    if as_json:
        _print_json([{k: r[k] for k in ("name", "pid", "url", "alive", "healthy", "ready", "log")} for r in rows])
        return
    if not rows:
        console.print("no stack is running here (start one with `driftloop up`)")
        return
    _status_table(rows)


def _status_table(rows: list[dict[str, Any]]) -> None:
    table = Table("component", "pid", "url", "health", "log")
    for r in rows:
        health = "[green]ready[/green]" if r["ready"] else ("healthy" if r["healthy"] else "[red]down[/red]")
        table.add_row(r["name"], str(r["pid"]), r["url"], health, r["log"])
    console.print(table)


@app.command()
def demo(
    keep_running: Annotated[bool, typer.Option(help="Leave the stack up at the end.")] = False,
) -> None:
    """Run the closed-loop demo on the embedded stack: train, serve, drift, retrain, redeploy."""
    from driftloop.demo import run_demo

    result = run_demo(_settings(), console=console, keep_running=keep_running)
    raise typer.Exit(0 if result.ok else 1)


# --- database / pipelines / schemas ---------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the newest schema (Alembic)."""
    from driftloop.db import migrate

    settings = _settings()
    migrate(settings.database_url)
    console.print("database is up to date")


@db_app.command("purge")
def db_purge() -> None:
    """Run the retention purges now (what the services do periodically): old serving predictions and feedback,
    monitor observations and feedback, processed-event ids; rows still needed stay (see the README)."""
    from driftloop.bus import purge_processed_events
    from driftloop.db import create_engine_for

    settings = _settings()
    purged: dict[str, Any] = {}
    # The purge rules belong to the owning services: each runs as ``python -m driftloop.services.NAME purge``.
    for service in ("serving", "monitor"):
        done = subprocess.run(
            [sys.executable, "-m", f"driftloop.services.{service}", "purge"], capture_output=True, text=True
        )
        if done.returncode != 0:
            console.print(f"[red]{service} purge failed:[/red] {done.stderr.strip()}")
            raise typer.Exit(1)
        purged.update(json.loads(done.stdout))
    engine = create_engine_for(settings.database_url)
    purged["processed_events"] = purge_processed_events(
        engine,
        retention_days=settings.kafka.processed_events_retention_days,
        batch_rows=settings.database.purge_batch_rows,
    )
    _print_json(purged)


@pipeline_app.command("validate")
def pipeline_validate(files: Annotated[list[Path] | None, typer.Argument()] = None) -> None:
    """Check pipeline files (default: every file in pipelines_dir)."""
    from driftloop.pipeline import load_pipeline, load_pipelines

    if files:
        for f in files:
            cfg = load_pipeline(f)
            console.print(f"{f}: ok (stream {cfg.stream.name}, model {cfg.model.name})")
    else:
        for name, cfg in load_pipelines(_settings().pipelines_dir).items():
            console.print(f"model {name}: ok (stream {cfg.stream.name})")


@schemas_app.command("check")
def schemas_check() -> None:
    """Check every event schema against the versions in schemas/compatibility.lock.json."""
    from driftloop.schemalock import check_lock

    problems = check_lock()
    if problems:
        for p in problems:
            err_console.print(f"[red]{p}[/red]")
        raise typer.Exit(1)
    console.print("every event schema is backward compatible with its locked versions")


@schemas_app.command("lock")
def schemas_lock() -> None:
    """Record the current event schemas as released versions (after `schemas check` passes)."""
    from driftloop.schemalock import update_lock

    added = update_lock()
    console.print(f"locked {len(added)} new schema version(s): {', '.join(added) or '-'}")


# --- datasets, models, retrain --------------------------------------------------------------------------------


@dataset_app.command("cut")
def dataset_cut(stream: str) -> None:
    """Cut a dataset version of STREAM now, from the rows landed since the last one."""
    # A cut runs Spark: minutes on a busy machine or a large stream.
    _print_json(_call("ingestion", "POST", f"/v1/streams/{stream}/datasets", timeout=900.0))


@dataset_app.command("list")
def dataset_list(stream: str) -> None:
    """Dataset versions of STREAM."""
    versions = _call("ingestion", "GET", f"/v1/streams/{stream}/datasets")
    table = Table("version", "rows", "new rows", "hash", "parent", "created")
    for v in versions if isinstance(versions, list) else versions.get("versions", []):
        table.add_row(
            v.get("dataset_version_id", v.get("id", "")),
            str(v.get("row_count")),
            str(v.get("new_rows")),
            str(v.get("content_hash", ""))[:12],
            str(v.get("parent_version_id") or v.get("parent_id") or "-"),
            str(v.get("created_at", "")),
        )
    console.print(table)


# --- ingestion: dataset versions and dead letters (issue 5) -----------------------------------------------------


@dataset_app.command("show")
def dataset_show(version: Annotated[str, typer.Argument(help="STREAM@vN")]) -> None:
    """A dataset version: hash, rows, schema, time range, profile, parent, and the offsets/request ids it covers."""
    _print_json(_call("ingestion", "GET", f"/v1/datasets/{version}"))


@dataset_app.command("diff")
def dataset_diff(
    stream: str,
    from_version: Annotated[str | None, typer.Argument(help="vN (default: the version before TO)")] = None,
    to_version: Annotated[str | None, typer.Argument(help="vN (default: the newest)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Rows added/removed between two versions of STREAM and the profile change per column."""
    params = {k: v for k, v in {"from": from_version, "to": to_version}.items() if v}
    diff = _call("ingestion", "GET", f"/v1/streams/{stream}/datasets/diff", params=params, timeout=900.0)
    if as_json:
        _print_json(diff)
        return
    console.print(
        f"{diff['from']} -> {diff['to']}: rows {diff['rows']['from']} -> {diff['rows']['to']} "
        f"(+{diff['rows_added']} / -{diff['rows_removed']}, {diff['rows_unchanged']} unchanged)"
        + (" [same content]" if diff["same_content"] else "")
    )
    table = Table("column", "stat", "from", "to", "delta")
    for column, stats in diff["profile_changes"].items():
        for stat, change in stats.items():
            if isinstance(change, dict):
                table.add_row(column, stat, str(change["from"]), str(change["to"]), str(change.get("delta", "")))
            else:
                table.add_row(column, stat, "", str(change), "")
    console.print(table)


@dataset_app.command("compact")
def dataset_compact(
    stream: str, keep: Annotated[int, typer.Option(help="Versions whose landed batches stay as they are.")] = 2
) -> None:
    """Retention: compact the landed batches of older versions of STREAM (every version stays reproducible)."""
    _print_json(
        _call(
            "ingestion", "POST", f"/v1/streams/{stream}/datasets/compact", params={"keep_versions": keep}, timeout=900.0
        )
    )


@dlq_app.command("show")
def dlq_show(
    stream: str,
    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
    limit: Annotated[int, typer.Option(help="Newest N dead letters.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Open dead letters of STREAM: counts by reason, then the newest ones with field, message and source."""
    params: dict[str, Any] = {"limit": limit, **({"reason": reason} if reason else {})}
    body = _call("ingestion", "GET", f"/v1/streams/{stream}/dead-letters", params=params)
    if as_json:
        _print_json(body)
        return
    counts = body["counts"]
    table = Table("reason", "open")
    for name, n in counts["by_reason"].items():
        table.add_row(name, str(n))
    console.print(table)
    console.print(f"{counts['open']} open, {counts['replayed']} replayed")
    letters = Table("id", "reason", "field", "message", "source")
    for d in body["dead_letters"]:
        letters.add_row(str(d["id"]), d["reason"], d["field"] or "", d["message"][:80], d["source"])
    console.print(letters)


@dlq_app.command("replay")
def dlq_replay(
    stream: str,
    ids: Annotated[list[int] | None, typer.Option("--id", help="Dead letter id (repeatable).")] = None,
    reason: Annotated[str | None, typer.Option(help="All open dead letters of this reason.")] = None,
    fixes: Annotated[
        Path | None, typer.Option(help='JSON lines {"id": N, "record": {...}}: corrected records to land instead.')
    ] = None,
) -> None:
    """Re-validate dead letters of STREAM against the current pipeline config (with the fixed records of
    --fixes) and land those that pass; the others stay with their reason."""
    body: dict[str, Any] = {}
    if ids:
        body["ids"] = ids
    if reason:
        body["reason"] = reason
    if fixes is not None:
        body["fixes"] = {}
        for number, line in enumerate(fixes.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                body["fixes"][str(int(entry["id"]))] = entry["record"]
            except (ValueError, KeyError, TypeError) as exc:
                raise DriftloopError(f'{fixes}:{number}: expected {{"id": N, "record": {{...}}}} ({exc})') from None
    _print_json(_call("ingestion", "POST", f"/v1/streams/{stream}/dead-letters/replay", json=body))


@app.command()
def stats(stream: str) -> None:
    """Records in, landed and dead-lettered (by reason) for STREAM."""
    _print_json(_call("ingestion", "GET", f"/v1/streams/{stream}/stats"))


@models_app.command("list")
def models_list() -> None:
    """Registered models and their champion."""
    _print_json(_call("registry", "GET", "/v1/models"))


@models_app.command("show")
def models_show(name: str) -> None:
    """Versions of a model with metrics, lineage and gate numbers."""
    _print_json(_call("registry", "GET", f"/v1/models/{name}/versions"))


@app.command()
def retrain(
    model: str,
    reason: Annotated[str, typer.Option(help="Why (kept with the run).")] = "manual",
    dataset: Annotated[
        str | None, typer.Option(help="Pin the training input to this dataset version, STREAM@vN (default: latest).")
    ] = None,
) -> None:
    """Ask for a retrain of MODEL now (manual trigger), optionally on a pinned dataset version."""
    body: dict[str, Any] = {"reason": reason}
    if dataset:
        _call("ingestion", "GET", f"/v1/datasets/{dataset}")  # a clear error for an unknown version
        body["dataset_version_id"] = dataset
    _print_json(_call("triggers", "POST", f"/v1/models/{model}/retrain", json=body))


@app.command()
def rollback(
    model: str,
    to: Annotated[
        int | None, typer.Option("--to", help="Version to go back to (default: the previous champion).")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (kept with the alias and its event).")] = "",
) -> None:
    """Move MODEL's champion back to the previous champion (or --to V); serving follows."""
    body: dict[str, Any] = {"reason": reason}
    if to is not None:
        body["to"] = to
    moved = _call("registry", "POST", f"/v1/models/{model}/rollback", json=body)
    console.print(f"{model}: champion v{moved['previous_version']} -> v{moved['version']} (event {moved['event_id']})")


@models_app.command("alias")
def models_alias(
    name: str,
    alias: str,
    version: Annotated[int | None, typer.Argument(help="Move the alias here; omit to show where it points.")] = None,
    reason: Annotated[str, typer.Option(help="Why (required to move).")] = "",
) -> None:
    """Show an alias of model NAME, or move it to VERSION (champion moves what serving answers with)."""
    if version is None:
        _print_json(_call("registry", "GET", f"/v1/models/{name}/aliases/{alias}"))
        return
    if not reason:
        raise DriftloopError("moving an alias needs --reason")
    _print_json(
        _call("registry", "PUT", f"/v1/models/{name}/aliases/{alias}", json={"version": version, "reason": reason})
    )


@models_app.command("annotate")
def models_annotate(
    name: str,
    version: int,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="key=value to set, or key= to delete.")] = None,
    description: Annotated[str | None, typer.Option(help="Replace the description.")] = None,
) -> None:
    """Set or delete tags and replace the description of a version."""
    tags: dict[str, str | None] = {}
    for item in tag or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DriftloopError(f"--tag {item!r}: expected key=value (or key= to delete)")
        tags[key] = value or None
    body: dict[str, Any] = {}
    if tags:
        body["tags"] = tags
    if description is not None:
        body["description"] = description
    _print_json(_call("registry", "PATCH", f"/v1/models/{name}/versions/{version}", json=body))


# --- timeline and events --------------------------------------------------------------------------------------


@app.command()
def timeline(
    model: str,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The causal chain of every cascade of MODEL, newest last."""
    from driftloop.db import create_engine_for
    from driftloop.timeline import model_timeline

    cascades = model_timeline(create_engine_for(_settings().database_url), model)
    if as_json:
        _print_json([[s.to_dict() for s in steps] for steps in cascades])
        return
    print_timeline(model, cascades)


def print_timeline(model: str, cascades: list[Any], out: Console | None = None) -> None:
    out = out or console
    if not cascades:
        out.print(f"no events for model {model!r} yet")
        return
    for i, steps in enumerate(cascades, 1):
        root = steps[0]
        out.print(f"[bold]cascade {i}[/bold] (root {root.event_type} {root.event_id[:8]})")
        for step in steps:
            cause = f" <- {step.caused_by[:8]}" if step.caused_by else ""
            out.print(
                f"  {step.occurred_at:%H:%M:%S.%f}"[:-3]
                + f"  [cyan]{step.event_type:<22}[/cyan] {step.event_id[:8]}{cause}  {step.summary}",
                highlight=False,
            )


@events_app.command("show")
def events_show(event_id: str) -> None:
    """An event and the chain of events that caused it."""
    from driftloop.db import create_engine_for
    from driftloop.timeline import lineage

    chain = lineage(create_engine_for(_settings().database_url), event_id)
    if not chain:
        raise DriftloopError(f"no event {event_id!r} in the event log")
    _print_json({"event": chain[-1].payload, "caused_by_chain": [s.to_dict() for s in chain]})


# --- runs (training) and model export: in driftloop.runcli ------------------------------------------------------
from driftloop.runcli import register as _register_run_commands  # noqa: E402 - needs the apps above

_register_run_commands(app, models_app)


def main() -> None:
    try:
        app()
    except DriftloopError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
