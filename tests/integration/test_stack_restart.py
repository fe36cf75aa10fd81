"""The database is the truth, the bus carries news: the whole embedded stack (its own in-memory Tansu broker, our
schema registry, registry and serving as processes) is stopped and started again — every topic and message is gone
— and serving answers with the same champion, its switch joining the promotion's cascade (the timeline continues);
a promotion after the restart reaches serving through the recreated topics. Then serving is killed with SIGKILL:
the supervisor restarts it (counted in ``status``) and it serves the champion again.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from model_factory import feature_frame, make_pipeline, put_feature_set
from stack_support import TrainingData, drift_window_pipelines, play_training

from driftloop.clients.credentials import auth_headers
from driftloop.clients.db import create_engine_for
from driftloop.clients.db.models import EventRecord
from driftloop.clients.objectstore import open_object_store
from driftloop.contracts.events import new_event
from driftloop.contracts.payloads import ExternalTrigger
from driftloop.contracts.settings import Settings
from driftloop.ops.procs import free_port, pid_alive, wait_until
from driftloop.ops.stack import Stack
from driftloop.runtime.bus import EventBus

pytestmark = pytest.mark.integration

PROCESSES = ("registry", "serving")


def test_down_and_up_keeps_the_champion_and_the_timeline_and_the_supervisor_restarts_a_killed_service(
    tmp_path: Path,
) -> None:
    unique = uuid.uuid4().hex[:8]
    model, stream = f"restart-{unique}", f"restart-{unique}"
    registry_port = free_port()
    settings = Settings(
        home=tmp_path / "home",
        pipelines_dir=drift_window_pipelines(tmp_path / "pipelines", model, stream, 40),
        kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}", "session_timeout_ms": 2000},
        schema_registry={"url": f"http://127.0.0.1:{registry_port}"},
        services={"schemaregistry_port": registry_port, **{f"{n}_port": free_port() for n in PROCESSES}},
        serving={"reconcile_interval_seconds": 2.0},
        supervisor={"check_interval_seconds": 0.5, "backoff_seconds": 0.5},
    )
    serving_url = settings.services.url("serving")
    engine = create_engine_for(settings.database_url)
    stack = Stack(settings)

    def served() -> int | None:
        try:
            response = httpx.get(f"{serving_url}/v1/models/{model}", headers=auth_headers(settings), timeout=5)
        except httpx.HTTPError:
            return None
        return response.json()["version"] if response.status_code == 200 else None

    def switches(version: int) -> list[EventRecord]:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(EventRecord).where(EventRecord.event_type == "ServingSwitched", EventRecord.model == model)
            ).all()
        return [r for r in rows if r.payload["version"] == version]

    def train(run: str) -> str:
        """A cascade whose training the test plays; returns its cascade id."""
        bus = EventBus(settings, producer_name="test-training")
        try:
            root = new_event(ExternalTrigger(model=model, reason=run, details_json="{}"), producer="test")
            bus.publish(root)
            play_training(bus, trained, root, f"{run}-{unique}", trigger="external", reason=run, rounds=2 + len(run))
            bus.flush()
        finally:
            bus.close()
        return root.envelope.cascade_id

    try:
        stack.up(timeout=150, services=PROCESSES)
        pipeline = make_pipeline(model=model, stream=stream)
        store = open_object_store(settings)
        features = feature_frame(pipeline, rows=1500)
        trained = TrainingData(pipeline, store, features, put_feature_set(store, stream, 1, features))
        first_cascade = train("first")
        wait_until(lambda: served() == 1, 120, "serving v1")
        # The event log is written in the background: the switch's row follows the switch by a moment.
        wait_until(lambda: len(switches(1)) == 1, 30, "the switch in the event log")
        (before,) = switches(1)
        assert before.cascade_id == first_cascade

        # Down and up: the embedded broker keeps nothing, every topic is made again, empty.
        stack.down()
        components = stack.up(timeout=150, services=PROCESSES)
        wait_until(lambda: served() == 1, 60, "serving the same champion after the restart")
        health = httpx.get(f"{serving_url}/healthz", timeout=5).json()
        assert health["ready"] and health["registry"]["champions"] == {model: 1}
        # The new replica's switch is caused by the same promotion: it continues that cascade's timeline.
        wait_until(lambda: [s for s in switches(1) if s.event_id != before.event_id], 30, "the new switch logged")
        after = [s for s in switches(1) if s.event_id != before.event_id]
        assert after and {s.cascade_id for s in after} == {first_cascade}
        assert {s.caused_by for s in after} == {before.caused_by}

        # The bus works again: a promotion after the restart reaches serving through the recreated topics.
        second_cascade = train("second")
        wait_until(lambda: served() == 2, 120, "serving v2")
        wait_until(lambda: switches(2), 30, "the switch to v2 in the event log")  # written in the background
        assert {s.cascade_id for s in switches(2)} == {second_cascade}

        # kill -9 of serving: the supervisor restarts it, counts it, and it serves the champion again.
        (serving,) = [c for c in components if c.name == "serving"]
        os.kill(serving.pid, signal.SIGKILL)
        wait_until(
            lambda: any(r["name"] == "serving" and r["restarts"] == 1 and r["alive"] for r in stack.status()),
            60,
            "the supervisor to restart serving",
        )
        wait_until(lambda: served() == 2, 60, "the restarted serving to serve v2")
        (row,) = [r for r in stack.status() if r["name"] == "serving"]
        assert row["pid"] != serving.pid and not row["crashing"]
        assert "serving restarted" in (settings.log_dir / "supervisor.log").read_text()
    finally:
        started = stack.components()
        supervisor = stack.supervisor_pid()
        stack.down()
        engine.dispose()
    assert started and not any(pid_alive(c.pid) for c in started)
    assert supervisor is not None and not pid_alive(supervisor)
