"""``driftloop models | retrain | rollback``: the registry's models, versions and aliases; manual retrains."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from driftloop.errors import DriftloopError
from driftloop.ops.cli import _common as common

app = typer.Typer()
models_app = typer.Typer(help="Models in the registry.", no_args_is_help=True)


@models_app.command("list")
def models_list(as_json: common.JsonOption = False) -> None:
    """Registered models and their champion."""
    with common.client() as dl:
        models = dl.models()
    if as_json:
        common.print_json({"models": [m.raw for m in models]})
        return
    table = Table("model", "champion", "latest", "versions")
    for m in models:
        table.add_row(m.model, _version(m.champion_version), _version(m.latest_version), str(m.versions))
    common.console.print(table)


def _version(value: int | None) -> str:
    return f"v{value}" if value is not None else "-"


@models_app.command("show")
def models_show(name: str, as_json: common.JsonOption = True) -> None:
    """Versions of a model with metrics, lineage and gate numbers (JSON)."""
    with common.client() as dl:
        versions = dl.versions(name)
    aliases = {alias: v.version for v in versions for alias in v.aliases}
    common.print_json({"model": name, "aliases": aliases, "versions": [v.raw for v in versions]})


@app.command()
def retrain(
    model: str,
    reason: Annotated[str, typer.Option(help="Why (kept with the run).")] = "manual",
    dataset: Annotated[
        str | None, typer.Option(help="Pin the training input to this dataset version, STREAM@vN (default: latest).")
    ] = None,
) -> None:
    """Ask for a retrain of MODEL now (manual trigger), optionally on a pinned dataset version."""
    with common.client() as dl:
        if dataset:
            dl.dataset(dataset)  # a clear error for an unknown version
        common.print_json(dl.retrain(model, reason=reason, dataset=dataset).raw)


@app.command()
def rollback(
    model: str,
    to: Annotated[
        int | None, typer.Option("--to", help="Version to go back to (default: the previous champion).")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (kept with the alias and its event).")] = "",
) -> None:
    """Move MODEL's champion back to the previous champion (or --to V); serving follows."""
    with common.client() as dl:
        moved = dl.rollback(model, to=to, reason=reason)
    common.console.print(f"{model}: champion v{moved.previous_version} -> v{moved.version} (event {moved.event_id})")


@models_app.command("alias")
def models_alias(
    name: str,
    alias: str,
    version: Annotated[int | None, typer.Argument(help="Move the alias here; omit to show where it points.")] = None,
    reason: Annotated[str, typer.Option(help="Why (required to move).")] = "",
) -> None:
    """Show an alias of model NAME, or move it to VERSION (champion moves what serving answers with)."""
    if version is not None and not reason:
        raise DriftloopError("moving an alias needs --reason")
    with common.client() as dl:
        answer = dl.alias(name, alias) if version is None else dl.set_alias(name, alias, version, reason=reason)
        common.print_json(answer.raw)


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
    with common.client() as dl:
        common.print_json(dl.annotate(name, version, tags=tags, description=description).raw)


@models_app.command("export")
def models_export(
    name: str,
    version: int,
    directory: Annotated[Path, typer.Argument(help="Folder to write (created).")],
) -> None:
    """Export MODEL VERSION as a self-contained folder (model, signature, pinned requirements, predict.py, an Open
    Inference Protocol server serve.py and its Dockerfile) that predicts from the stream's raw fields exactly as
    serving does, without driftloop. The artifact is read from the object store and verified by its sha256; the
    features come from the model's pipeline file."""
    from driftloop.clients.objectstore import open_object_store
    from driftloop.contracts.pipeline import load_pipelines, pipeline_for_model
    from driftloop.ops.export import export_artifact

    pipeline = pipeline_for_model(load_pipelines(common.settings().pipelines_dir), name)
    with common.client() as dl:
        record = dl.version(name, version)
    store = open_object_store(common.settings())
    data = store.get_bytes(store.key_of(record.artifact_uri))
    export_artifact(data, directory, pipeline=pipeline, expected_sha256=record.artifact_sha256, version=version)
    common.console.print(
        f"exported {name} v{version} to {directory}: python {directory}/predict.py rows.jsonl "
        f"(rows of stream {pipeline.stream.name}'s raw fields, as serving takes them); an Open Inference Protocol "
        f"server of the same answers: python {directory}/serve.py, or docker build {directory}"
    )
