"""What every command group of the CLI shares: the consoles, the settings, calls to the services (through the one
HTTP client, ``driftloop.clients.http``) and JSON output."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from driftloop.clients.http import ServiceClient
from driftloop.contracts.settings import Settings, load_settings

console = Console()
err_console = Console(stderr=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def settings() -> Settings:
    return load_settings()


def call(service: str, method: str, path: str, **kwargs: Any) -> Any:
    """The JSON answer of ``service`` to ``method path``; an error answer raises from the exception tree."""
    with ServiceClient(service, settings()) as client:
        return client.call(method, path, **kwargs)


def call_text(service: str, method: str, path: str, **kwargs: Any) -> str:
    """The plain-text answer of ``service`` (e.g. a run's log)."""
    with ServiceClient(service, settings()) as client:
        return client.request(method, path, **kwargs).text


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
