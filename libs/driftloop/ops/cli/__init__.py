"""The ``driftloop`` command line: run the embedded stack, inspect datasets, models, runs and cascades.

One module per command group; each talks to the services through the platform client (``driftloop.client``).
"""

from __future__ import annotations

import typer

from driftloop.errors import DriftloopError
from driftloop.ops.cli import admin, data, events, models, runs, stack
from driftloop.ops.cli._common import err_console

app = typer.Typer(
    help="driftloop: continuous training driven by the data stream.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Top-level commands (up, down, status, demo, stats, retrain, rollback, timeline, ...) of each group's module.
for module in (stack, data, models, events):
    app.add_typer(module.app)
app.add_typer(admin.db_app, name="db")
app.add_typer(data.dataset_app, name="dataset")
app.add_typer(models.models_app, name="models")
app.add_typer(admin.pipeline_app, name="pipeline")
app.add_typer(events.events_app, name="events")
app.add_typer(admin.schemas_app, name="schemas")
app.add_typer(data.dlq_app, name="dlq")
app.add_typer(data.stream_app, name="stream")
app.add_typer(runs.runs_app, name="runs")


def main() -> None:
    try:
        app()
    except DriftloopError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from None


__all__ = ["app", "main"]

if __name__ == "__main__":
    main()
