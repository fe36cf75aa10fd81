"""What every command group of the CLI shares: the consoles, the settings, the platform client
(``driftloop.client.Client``: every call to a service goes through it) and output for people and for scripts.

Output for scripts: when stdout is not a terminal (a pipe, a file), nothing is wrapped or cut to a width (rich would
otherwise assume 80 columns), and every read command takes ``--json``."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from driftloop.client import Client
from driftloop.contracts.settings import Settings, load_settings

# Far wider than any line: a table or a line is as wide as its content, never wrapped nor cut.
UNBOUNDED_WIDTH = 1_000_000


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=UNBOUNDED_WIDTH, soft_wrap=True)


console = _console()
err_console = _console(stderr=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON on stdout).")]


def settings() -> Settings:
    return load_settings()


def client() -> Client:
    """The platform client, at the settings' URLs with their token (use it in a ``with`` block)."""
    return Client(settings())


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
