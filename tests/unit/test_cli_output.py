"""The CLI for scripts: every read command takes ``--json``; when stdout is not a terminal nothing is wrapped or cut
(a long dead-letter message stays on its line, whole)."""

from __future__ import annotations

import httpx
import pytest
from typer.testing import CliRunner

from driftloop.client import Client
from driftloop.ops import cli
from driftloop.ops.cli import _common

READ_COMMANDS = [
    ("status",),
    ("stats",),
    ("timeline",),
    ("stream", "list"),
    ("stream", "schema"),
    ("dataset", "list"),
    ("dataset", "show"),
    ("dataset", "diff"),
    ("dlq", "show"),
    ("models", "list"),
    ("models", "show"),
    ("runs", "list"),
    ("runs", "show"),
    ("runs", "logs"),
    ("runs", "compare"),
    ("events", "show"),
]


@pytest.mark.parametrize("path", READ_COMMANDS, ids=" ".join)
def test_every_read_command_takes_json(path: tuple[str, ...]) -> None:
    runner = CliRunner()
    result = runner.invoke(cli.app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "--json" in result.output


def test_tables_are_not_wrapped_nor_cut_when_stdout_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    message = "amount: the writer schema (id 7) has string, the stream expects double; " + "x" * 300
    answer = {
        "stream": "tx",
        "counts": {"by_reason": {"schema_mismatch": 1}, "open": 1, "replayed": 0},
        "dead_letters": [
            {"id": 1, "reason": "schema_mismatch", "field": "amount", "message": message, "source": "kafka"}
        ],
    }

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answer)

    transport = httpx.MockTransport(handle)
    monkeypatch.setattr(
        _common, "client", lambda: Client(urls={"ingestion": "http://i"}, token="t", transport=transport)
    )
    result = CliRunner().invoke(cli.app, ["dlq", "show", "tx"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "kafka" in line)
    assert message in line
