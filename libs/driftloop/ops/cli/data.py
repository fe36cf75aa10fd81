"""``driftloop dataset | dlq | stats``: a stream's dataset versions and dead letters (the ingestion service)."""

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


@dataset_app.command("cut")
def dataset_cut(stream: str) -> None:
    """Cut a dataset version of STREAM now, from the rows landed since the last one."""
    # A cut runs Spark: minutes on a busy machine or a large stream.
    common.print_json(common.call("ingestion", "POST", f"/v1/streams/{stream}/datasets", timeout=900.0))


@dataset_app.command("list")
def dataset_list(stream: str) -> None:
    """Dataset versions of STREAM."""
    versions = common.call("ingestion", "GET", f"/v1/streams/{stream}/datasets")
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
    common.console.print(table)


@dataset_app.command("show")
def dataset_show(version: Annotated[str, typer.Argument(help="STREAM@vN")]) -> None:
    """A dataset version: hash, rows, schema, time range, profile, parent, and the offsets/request ids it covers."""
    common.print_json(common.call("ingestion", "GET", f"/v1/datasets/{version}"))


@dataset_app.command("diff")
def dataset_diff(
    stream: str,
    from_version: Annotated[str | None, typer.Argument(help="vN (default: the version before TO)")] = None,
    to_version: Annotated[str | None, typer.Argument(help="vN (default: the newest)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Rows added/removed between two versions of STREAM and the profile change per column."""
    params = {k: v for k, v in {"from": from_version, "to": to_version}.items() if v}
    diff = common.call("ingestion", "GET", f"/v1/streams/{stream}/datasets/diff", params=params, timeout=900.0)
    if as_json:
        common.print_json(diff)
        return
    common.console.print(
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
    common.console.print(table)


@dataset_app.command("compact")
def dataset_compact(
    stream: str, keep: Annotated[int, typer.Option(help="Versions whose landed batches stay as they are.")] = 2
) -> None:
    """Retention: compact the landed batches of older versions of STREAM (every version stays reproducible)."""
    common.print_json(
        common.call(
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
    body = common.call("ingestion", "GET", f"/v1/streams/{stream}/dead-letters", params=params)
    if as_json:
        common.print_json(body)
        return
    counts = body["counts"]
    table = Table("reason", "open")
    for name, n in counts["by_reason"].items():
        table.add_row(name, str(n))
    common.console.print(table)
    common.console.print(f"{counts['open']} open, {counts['replayed']} replayed")
    letters = Table("id", "reason", "field", "message", "source")
    for d in body["dead_letters"]:
        letters.add_row(str(d["id"]), d["reason"], d["field"] or "", d["message"][:80], d["source"])
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
    common.print_json(common.call("ingestion", "POST", f"/v1/streams/{stream}/dead-letters/replay", json=body))


@app.command()
def stats(stream: str) -> None:
    """Records in, landed and dead-lettered (by reason) for STREAM."""
    common.print_json(common.call("ingestion", "GET", f"/v1/streams/{stream}/stats"))
