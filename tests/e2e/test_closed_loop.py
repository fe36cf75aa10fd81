"""The whole cascade on the real stack (Tansu, our registry, SQLite, local objects, Spark, Ray), no manual step:
v1 is trained and served; a challenger that is not better is rejected while v1 keeps serving; the stream drifts,
and v2 — whose lineage leads back to the drift event — ends up serving."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from driftloop.clients.db import create_engine_for
from driftloop.contracts.settings import Settings, settings_env
from driftloop.ops.cli import app as cli_app
from driftloop.ops.demo import MODEL, DemoScale, run_demo
from driftloop.ops.procs import free_port, pid_alive
from driftloop.ops.stack import SERVICES, Stack
from driftloop.runtime.timeline import lineage

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_drift_cascades_to_a_new_champion_with_no_human(tmp_path: Path) -> None:
    ports = {f"{name}_port": free_port() for name in ("schemaregistry", *SERVICES)}
    settings = Settings(
        home=tmp_path / "home",
        pipelines_dir=REPO / "pipelines",
        kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}", "session_timeout_ms": 2000},
        schema_registry={"url": f"http://127.0.0.1:{ports['schemaregistry_port']}"},
        services=ports,
    )
    console = Console(file=(tmp_path / "demo.out").open("w"), width=160)
    stack_settings = settings.model_copy(update={"home": (tmp_path / "home" / "demo").resolve()})
    stack = Stack(stack_settings)
    try:
        result = run_demo(settings, console=console, keep_running=True, scale=DemoScale(step_timeout=300))
        console.file.flush()
        told = (tmp_path / "demo.out").read_text()  # the demo's own account, shown by any assertion below
        assert result.v1 is not None, told
        # The challenger trained on the same data was not better: rejected, and v1 went on serving.
        assert result.rejected_version is not None and result.rejected_version != result.v1, told
        assert result.served_after_rejection == result.v1, told
        # Drift → retrain → gate → promotion → serving, with no manual step.
        assert result.drift_event_id is not None, told
        assert result.v2 is not None and result.v2 not in (result.v1, result.rejected_version), told
        assert result.served_at_end == result.v2, told

        registry = settings.services.url("registry")
        version = httpx.get(f"{registry}/v1/models/{MODEL}/versions/{result.v2}").json()
        assert version["status"] == "promoted"
        champion = httpx.get(f"{registry}/v1/models/{MODEL}/aliases/champion").json()
        assert champion["version"] == result.v2

        # The promotion's chain of causes starts at the drift event.
        engine = create_engine_for(stack_settings.database_url)
        with engine.connect() as conn:
            from driftloop.clients.db.models import EventRecord

            promoted = conn.execute(
                EventRecord.__table__.select().where(
                    EventRecord.event_type == "ModelPromoted", EventRecord.model == MODEL
                )
            ).all()
        promotion = next(p for p in promoted if p.payload["version"] == result.v2)
        chain = lineage(engine, promotion.event_id)
        assert chain[0].event_id == result.drift_event_id
        assert [s.event_type for s in chain] == [
            "DriftDetected",
            "TrainingRequested",
            "TrainingCompleted",
            "ModelPromoted",
        ]
        assert chain[1].payload["trigger"] == "drift"

        # Nothing lost: every record sent is landed or dead-lettered.
        stats = httpx.get(f"{settings.services.url('ingestion')}/v1/streams/transactions/stats").json()
        assert stats["records_in"] == result.produced
        assert stats["landed"] + stats["dead_lettered"] == stats["records_in"]
        assert stats["dead_lettered"] >= 9  # 5 HTTP wrong types + 4 malformed Kafka messages

        # Security out of the box: `driftloop up` wrote an admin token (mode 600) that the demo and CLI used;
        # mutating calls without it are refused.
        token_file = stack_settings.home / "admin.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert httpx.post(f"{registry}/v1/models/{MODEL}/rollback", json={}).status_code == 401
        retrain = httpx.post(f"{settings.services.url('triggers')}/v1/models/{MODEL}/retrain", json={})
        assert retrain.status_code == 401

        # Rollback through the CLI (token read from <home>): champion goes back to v1 and serving follows.
        cli = CliRunner().invoke(
            cli_app, ["rollback", MODEL, "--to", str(result.v1), "--reason", "e2e"], env=settings_env(stack_settings)
        )
        assert cli.exit_code == 0, cli.output
        champion = httpx.get(f"{registry}/v1/models/{MODEL}/aliases/champion").json()
        assert (champion["version"], champion["moved_by"], champion["reason"]) == (result.v1, "local-admin", "e2e")
        serving = settings.services.url("serving")
        deadline = time.monotonic() + 120
        while httpx.get(f"{serving}/v1/models/{MODEL}").json().get("version") != result.v1:
            assert time.monotonic() < deadline, "serving did not follow the rollback"
            time.sleep(0.5)
    finally:
        pids = [c.pid for c in stack.components()]
        stack.down()
    assert pids and not any(pid_alive(pid) for pid in pids)
