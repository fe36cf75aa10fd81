"""``driftloop db | pipeline | schemas | tokens``: the database, the pipeline files, the event schemas' lock and
API tokens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from driftloop.ops.cli import _common as common

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
pipeline_app = typer.Typer(help="Pipeline config files.", no_args_is_help=True)
schemas_app = typer.Typer(help="Event schemas and their compatibility lock.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens and their scopes.", no_args_is_help=True)
# Scope -> the settings key its tokens live under (driftloop.runtime.security describes each scope).
TOKEN_SETTINGS = {
    "admin": "admin_tokens",
    "read": "read_tokens",
    "producer": "producer_tokens",
    "serving": "serving_tokens",
}


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the newest schema (Alembic)."""
    from driftloop.clients.db import migrate

    settings = common.settings()
    migrate(settings.database_url)
    common.console.print("database is up to date")


@db_app.command("purge")
def db_purge() -> None:
    """Run the retention purges now (what the services do periodically): old serving predictions and feedback,
    monitor observations and feedback, processed-event ids; rows still needed stay (see the README)."""
    from driftloop.clients.db import create_engine_for
    from driftloop.runtime.bus import purge_processed_events

    settings = common.settings()
    purged: dict[str, Any] = {}
    # The purge rules belong to the owning services: each runs as ``python -m driftloop.services.NAME purge``.
    for service in ("serving", "monitor"):
        done = subprocess.run(
            [sys.executable, "-m", f"driftloop.services.{service}", "purge"], capture_output=True, text=True
        )
        if done.returncode != 0:
            common.console.print(f"[red]{service} purge failed:[/red] {done.stderr.strip()}")
            raise typer.Exit(1)
        purged.update(json.loads(done.stdout))
    engine = create_engine_for(settings.database_url)
    purged["processed_events"] = purge_processed_events(
        engine,
        retention_days=settings.kafka.processed_events_retention_days,
        batch_rows=settings.database.purge_batch_rows,
    )
    common.print_json(purged)


@pipeline_app.command("validate")
def pipeline_validate(
    files: Annotated[list[Path] | None, typer.Argument()] = None, as_json: common.JsonOption = False
) -> None:
    """Check pipeline files (default: every file in pipelines_dir)."""
    from driftloop.contracts.pipeline import load_pipeline, load_pipelines

    if files:
        checked = [(str(f), load_pipeline(f)) for f in files]
    else:
        checked = [(f"model {name}", cfg) for name, cfg in load_pipelines(common.settings().pipelines_dir).items()]
    if as_json:
        common.print_json(
            [{"source": s, "model": c.model.name, "stream": c.stream.name, "ok": True} for s, c in checked]
        )
        return
    for source, cfg in checked:
        common.console.print(f"{source}: ok (stream {cfg.stream.name}, model {cfg.model.name})")


@pipeline_app.command("apply")
def pipeline_apply(file: Path) -> None:
    """Check FILE (syntax, names, the stream schema's compatibility with its registered subject) and store it in
    pipelines_dir; with the stack running, create the stream's topic, register its schema and tell the running
    services, which take it at once (no restart). Services started later read pipelines_dir."""
    from driftloop.ops.pipelines import apply_pipeline

    settings = common.settings()
    running = _bus_running(settings)
    applied = apply_pipeline(settings, file, bus=running)
    if running:
        done = f"; {', '.join(applied.bus)}. Running services take it now."
    else:
        done = " (the stack is not running: `up` prepares the bus and the services read it at start)."
    common.console.print(f"{applied.path}: {applied.change} (stream {applied.stream}, model {applied.model}){done}")


@pipeline_app.command("remove")
def pipeline_remove(
    model: str, force: Annotated[bool, typer.Option(help="Remove it even while serving answers with it.")] = False
) -> None:
    """Delete MODEL's pipeline file and tell the running services, which drop the model at once; refused while
    serving answers with the model, unless --force."""
    from driftloop.errors import DriftloopError
    from driftloop.ops.pipelines import remove_pipeline

    settings = common.settings()
    served: int | None = None
    running = _bus_running(settings)
    if running:
        try:
            with common.client() as dl:
                served = dl.served(model).version
        except DriftloopError:  # not served (404/503), or serving is not running
            served = None
    path = remove_pipeline(settings, model, served_version=served, force=force, bus=running)
    common.console.print(f"removed {path}" + ("; running services dropped it" if running else ""))


def _bus_running(settings: Any) -> bool:
    """Whether the broker and registry these settings name are running: the embedded ones of `driftloop up`, or
    external ones (assumed up)."""
    from driftloop.ops.procs import pid_alive
    from driftloop.ops.stack import Stack

    alive = {c.name for c in Stack(settings).components() if pid_alive(c.pid)}
    return (not settings.kafka.embedded or "broker" in alive) and (
        not settings.schema_registry.embedded or "schemaregistry" in alive
    )


@schemas_app.command("check")
def schemas_check() -> None:
    """Check every event schema against the versions in schemas/compatibility.lock.json, and that the typed
    payloads (driftloop/contracts/payloads.py) are generated from the schemas as they are."""
    from driftloop.contracts.codegen import PAYLOADS_PATH, render
    from driftloop.contracts.schemalock import check_lock

    problems = check_lock()
    if PAYLOADS_PATH.read_text() != render():
        problems.append(f"{PAYLOADS_PATH} is out of date: run python -m driftloop.contracts.codegen")
    if problems:
        for p in problems:
            common.err_console.print(f"[red]{p}[/red]")
        raise typer.Exit(1)
    common.console.print("every event schema is backward compatible with its locked versions; payloads are current")


@schemas_app.command("lock")
def schemas_lock() -> None:
    """Record the current event schemas as released versions (after `schemas check` passes)."""
    from driftloop.contracts.schemalock import update_lock

    added = update_lock()
    common.console.print(f"locked {len(added)} new schema version(s): {', '.join(added) or '-'}")


@tokens_app.command("new")
def tokens_new(
    name: Annotated[str, typer.Argument(help="Who holds it (kept with alias moves and shown in 403 answers).")],
    scope: Annotated[str, typer.Option(help="admin, read, producer (records, schemas) or serving (predict).")],
    stream: Annotated[list[str] | None, typer.Option(help="producer: only these streams (repeatable).")] = None,
    model: Annotated[list[str] | None, typer.Option(help="serving: only these models (repeatable).")] = None,
) -> None:
    """Make a new random token of a scope and print the settings that grant it (tokens live in the settings,
    e.g. DRIFTLOOP_SECURITY__PRODUCER_TOKENS; restart the services after adding it)."""
    from driftloop.clients.credentials import new_token

    if scope not in TOKEN_SETTINGS:
        common.err_console.print(f"[red]unknown scope {scope!r}: one of {', '.join(TOKEN_SETTINGS)}[/red]")
        raise typer.Exit(2)
    if (stream and scope != "producer") or (model and scope != "serving"):
        common.err_console.print("[red]--stream restricts producer tokens, --model serving tokens[/red]")
        raise typer.Exit(2)
    token = new_token()
    key = TOKEN_SETTINGS[scope]
    settings: dict[str, Any] = {key: {name: token}}
    if stream:
        settings["token_streams"] = {name: stream}
    if model:
        settings["token_models"] = {name: model}
    common.print_json({"name": name, "scope": scope, "token": token, "add_to_settings": {"security": settings}})


@tokens_app.command("list")
def tokens_list() -> None:
    """The configured tokens: name, scope and restriction (never the secrets)."""
    security = common.settings().security
    rows = []
    for scope, key in TOKEN_SETTINGS.items():
        for name in getattr(security, key):
            only = security.token_streams.get(name) or security.token_models.get(name)
            rows.append({"name": name, "scope": scope, "only": only})
    common.print_json(rows)
