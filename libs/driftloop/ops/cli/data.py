"""``driftloop stream | dataset | dlq | stats``: a stream's producer contract, dataset versions and dead letters (the
ingestion service)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from driftloop.errors import DriftloopError
from driftloop.ops.cli import _common as common

app = typer.Typer()
dataset_app = typer.Typer(help="Dataset versions of a stream.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters of a stream: list by reason, replay once fixed.", no_args_is_help=True)
stream_app = typer.Typer(help="Streams: the producer contract.", no_args_is_help=True)


@stream_app.command("list")
def stream_list(as_json: common.JsonOption = False) -> None:
    """Every stream: topic, model, fields."""
    with common.client() as dl:
        streams = dl.streams()
    if as_json:
        common.print_json([s.raw for s in streams])
        return
    table = Table("stream", "topic", "model", "fields")
    for s in streams:
        table.add_row(s.stream, s.topic, s.model, ", ".join(f"{f.name}:{f.type}" for f in s.fields))
    common.console.print(table)


@stream_app.command("schema")
def stream_schema(stream: str, as_json: common.JsonOption = False) -> None:
    """The Avro value schema producers of STREAM write with (save it as an .avsc); --json: the whole contract
    (topic, subject, schema, field roles). `driftloop up` registers it under the subject."""
    with common.client() as dl:
        contract = dl.stream_schema(stream)
    common.print_json(contract.raw if as_json else contract.avro_schema)


@dataset_app.command("cut")
def dataset_cut(stream: str) -> None:
    """Cut a dataset version of STREAM now, from the rows landed since the last one."""
    with common.client() as dl:
        common.print_json(dl.cut_dataset(stream).raw)


@dataset_app.command("list")
def dataset_list(stream: str, as_json: common.JsonOption = False) -> None:
    """Dataset versions of STREAM."""
    with common.client() as dl:
        versions = dl.datasets(stream)
    if as_json:
        common.print_json({"stream": stream, "versions": [v.raw for v in versions]})
        return
    table = Table("version", "rows", "new rows", "hash", "parent", "created")
    for v in versions:
        table.add_row(
            v.dataset_version_id,
            str(v.row_count),
            str(v.new_rows),
            (v.content_hash or "")[:12],
            v.parent_version_id or "-",
            v.created_at.isoformat() if v.created_at else "",
        )
    common.console.print(table)


@dataset_app.command("show")
def dataset_show(version: Annotated[str, typer.Argument(help="STREAM@vN")], as_json: common.JsonOption = True) -> None:
    """A dataset version: hash, rows, schema, time range, profile, parent, and the offsets/request ids it covers
    (JSON)."""
    with common.client() as dl:
        common.print_json(dl.dataset(version).raw)


@dataset_app.command("diff")
def dataset_diff(
    stream: str,
    from_version: Annotated[str | None, typer.Argument(help="vN (default: the version before TO)")] = None,
    to_version: Annotated[str | None, typer.Argument(help="vN (default: the newest)")] = None,
    as_json: common.JsonOption = False,
) -> None:
    """Rows added/removed between two versions of STREAM and the profile change per column."""
    with common.client() as dl:
        diff = dl.diff_datasets(stream, from_version, to_version)
    if as_json:
        common.print_json(diff.raw)
        return
    common.console.print(
        f"{diff.from_version} -> {diff.to_version}: rows {diff.rows['from']} -> {diff.rows['to']} "
        f"(+{diff.rows_added} / -{diff.rows_removed}, {diff.rows_unchanged} unchanged)"
        + (" [same content]" if diff.same_content else "")
    )
    table = Table("column", "stat", "from", "to", "delta")
    for column, stats in diff.profile_changes.items():
        for stat, change in stats.items():
            if isinstance(change, dict):
                table.add_row(column, stat, str(change["from"]), str(change["to"]), str(change.get("delta", "")))
            else:
                table.add_row(column, stat, "", str(change), "")
    common.console.print(table)


@dataset_app.command("compact")
def dataset_compact(
    stream: str, keep: Annotated[int, typer.Option(help="Versions whose landed batches stay as they are.")] = 2
) -> None:
    """Retention: compact the landed batches of older versions of STREAM (every version stays reproducible)."""
    with common.client() as dl:
        common.print_json(dl.compact_datasets(stream, keep_versions=keep))


@dlq_app.command("show")
def dlq_show(
    stream: str,
    reason: Annotated[str | None, typer.Option(help="Only this reason.")] = None,
    limit: Annotated[int, typer.Option(help="Newest N dead letters.")] = 20,
    as_json: common.JsonOption = False,
) -> None:
    """Open dead letters of STREAM: counts by reason, then the newest ones with field, message and source."""
    with common.client() as dl:
        body = dl.dead_letters(stream, reason=reason, limit=limit)
    if as_json:
        common.print_json(body.raw)
        return
    counts = body.counts
    table = Table("reason", "open")
    for name, n in counts.by_reason.items():
        table.add_row(name, str(n))
    common.console.print(table)
    common.console.print(f"{counts.open} open, {counts.replayed} replayed")
    letters = Table("id", "reason", "field", "message", "source")
    for d in body.dead_letters:
        letters.add_row(str(d.id), d.reason, d.field or "", d.message, d.source)
    common.console.print(letters)


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
    fixed: dict[int, Any] = {}
    if fixes is not None:
        for number, line in enumerate(fixes.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                fixed[int(entry["id"])] = entry["record"]
            except (ValueError, KeyError, TypeError) as exc:
                raise DriftloopError(f'{fixes}:{number}: expected {{"id": N, "record": {{...}}}} ({exc})') from None
    with common.client() as dl:
        common.print_json(dl.replay_dead_letters(stream, ids=ids or None, reason=reason, fixes=fixed).raw)


@app.command()
def stats(stream: str, as_json: common.JsonOption = True) -> None:
    """Records in, landed and dead-lettered (by reason) for STREAM (JSON)."""
    with common.client() as dl:
        common.print_json(dl.stream_stats(stream))
