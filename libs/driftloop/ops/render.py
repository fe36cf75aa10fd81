"""How the operator tools print what the platform recorded (shared by the CLI and the demo)."""

from __future__ import annotations

from typing import Any

from rich.console import Console


def print_timeline(model: str, cascades: list[Any], out: Console) -> None:
    """Each cascade of ``model`` (``driftloop.runtime.timeline.model_timeline``): one line per step, with its cause."""
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
