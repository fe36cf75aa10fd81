"""``driftloop timeline | events``: the event log and the causal chain of each cascade."""

from __future__ import annotations

import typer

from driftloop.errors import DriftloopError
from driftloop.ops.cli import _common as common
from driftloop.ops.render import print_timeline

app = typer.Typer()
events_app = typer.Typer(help="The event log.", no_args_is_help=True)


@app.command()
def timeline(
    model: str,
    as_json: common.JsonOption = False,
) -> None:
    """The causal chain of every cascade of MODEL, newest last."""
    from driftloop.clients.db import create_engine_for
    from driftloop.runtime.timeline import model_timeline

    cascades = model_timeline(create_engine_for(common.settings().database_url), model)
    if as_json:
        common.print_json([[s.to_dict() for s in steps] for steps in cascades])
        return
    print_timeline(model, cascades, common.console)


@events_app.command("show")
def events_show(event_id: str, as_json: common.JsonOption = True) -> None:
    """An event and the chain of events that caused it (JSON)."""
    from driftloop.clients.db import create_engine_for
    from driftloop.runtime.timeline import lineage

    chain = lineage(create_engine_for(common.settings().database_url), event_id)
    if not chain:
        raise DriftloopError(f"no event {event_id!r} in the event log")
    common.print_json({"event": chain[-1].payload, "caused_by_chain": [s.to_dict() for s in chain]})
