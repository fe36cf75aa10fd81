"""The monitor as a process on the real broker (its stream engine is a faust agent): killed with ``kill -9`` in
the middle of a window and restarted, it reports the same windows and statistics as a monitor that never stopped
(the same events through the same handlers, in-process, on a database of their own); feedback joined with the
predictions gives performance windows and ``PerformanceDegraded`` on the topic."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
import yaml
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient
from monitor_support import champion_promoted, prediction_logged, put_reference, raw_inputs
from monitor_triggers_support import read_events, wait_for

from driftloop.clients.db import create_engine_for, migrate, session_factory
from driftloop.clients.db.models import DriftReport, MonitorObservation, PerformanceReport
from driftloop.clients.objectstore import open_object_store
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import FeedbackReceived
from driftloop.contracts.pipeline import load_pipeline
from driftloop.contracts.settings import Settings, settings_env
from driftloop.contracts.topics import PERFORMANCE_DEGRADED, Topic
from driftloop.ops.procs import free_port, http_ready, spawn, stop_pid, wait_until
from driftloop.runtime.bus import EventBus, ensure_topics
from driftloop.services.monitor.handlers import MonitorHandlers
from driftloop.services.monitor.service import CONSUMER_GROUP
from driftloop.services.monitor.streaming import FaustEngine

pytestmark = pytest.mark.integration

PIPELINE_FILE = Path(__file__).resolve().parents[2] / "pipelines" / "transactions.yaml"
PREDICTIONS = 260
KILL_AFTER = 110  # stored predictions before the kill: inside the window [100, 160)


def drift_rows(url: str, model: str) -> list[tuple[Any, ...]]:
    engine = create_engine_for(url)
    try:
        with session_factory(engine)() as session:
            rows = session.scalars(
                sa.select(DriftReport).where(DriftReport.model == model).order_by(DriftReport.window_index)
            ).all()
            return [
                (r.window_index, r.window_start, r.window_end, r.window_size, r.drifted, r.tests, r.prediction_test)
                for r in rows
            ]
    finally:
        engine.dispose()


def observation_count(url: str, model: str) -> int:
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            query = sa.select(sa.func.count()).where(MonitorObservation.model == model)
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


def performance_rows(url: str, model: str) -> list[tuple[Any, ...]]:
    engine = create_engine_for(url)
    try:
        with session_factory(engine)() as session:
            rows = session.scalars(
                sa.select(PerformanceReport)
                .where(PerformanceReport.model == model)
                .order_by(PerformanceReport.window_index)
            ).all()
            return [(r.window_index, r.window_size, r.metric, r.value, r.degraded) for r in rows]
    finally:
        engine.dispose()


def test_kill_9_mid_window_then_restart_reports_what_a_monitor_that_never_stopped_reports(
    make_settings: Callable[..., Settings], unique: str, tmp_path: Path
) -> None:
    # A pipeline of its own: hopping count windows of 60 every 30; performance windows of 40 labels.
    config = yaml.safe_load(PIPELINE_FILE.read_text())
    config["stream"]["name"] = f"tx-{unique}"
    config["model"]["name"] = model = f"fraud-{unique}"
    config["monitor"].update(
        {
            "window_size": 60,
            "hop": 30,
            "reference_rows": 1000,
            "performance": {"metric": "accuracy", "window_size": 40, "threshold": 0.8},
        }
    )
    pipelines_dir = tmp_path / "pipelines"
    pipelines_dir.mkdir()
    (pipelines_dir / "p.yaml").write_text(yaml.safe_dump(config))
    pipeline = load_pipeline(pipelines_dir / "p.yaml")
    port = free_port()
    settings = make_settings(pipelines_dir=pipelines_dir, services={"monitor_port": port})
    migrate(settings.database_url)

    rng = np.random.default_rng(23)
    store = open_object_store(settings)
    prefix = put_reference(store, pipeline, raw_inputs(1500, rng))
    promoted = champion_promoted(store, model, pipeline.stream.name, prefix)
    inputs = raw_inputs(PREDICTIONS // 2, rng) + raw_inputs(PREDICTIONS - PREDICTIONS // 2, rng, amount_scale=1.8)
    predictions = [prediction_logged(model, i, row, 0.9) for i, row in enumerate(inputs)]
    # Labels: right for the first 120 predictions, then right only half of the time.
    feedback = [
        new_event(
            FeedbackReceived(request_id=f"req-{i}", model=model, index=0, actual=1.0 if i < 120 or i % 2 else 0.0),
            producer="test-serving",
        )
        for i in range(PREDICTIONS)
    ]

    base = f"http://127.0.0.1:{port}"

    def status() -> dict[str, Any]:
        return httpx.get(f"{base}/v1/monitor/{model}", timeout=5).json()

    def start() -> Any:
        proc = spawn(
            [sys.executable, "-m", "driftloop.services.monitor"], tmp_path / "monitor.out", settings_env(settings)
        )
        try:
            wait_until(lambda: http_ready(f"{base}/healthz"), 90, "the monitor to be ready")
        except BaseException:
            stop_pid(proc.pid)  # never leave a process behind
            raise
        return proc

    bus = EventBus(settings, producer_name="test")
    proc = start()
    try:
        bus.publish(promoted)
        # Different topics have no order between them: predictions before the champion is known are not watched.
        wait_for(lambda: status()["version"] == 1, "the champion to be watched")
        for event in predictions:
            bus.publish(event, wait=False)
        bus.flush()
        wait_for(lambda: status()["predictions_stored"] >= KILL_AFTER, "predictions before the kill", timeout=120)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
        stored_at_kill = observation_count(settings.database_url, model)
        assert KILL_AFTER <= stored_at_kill < PREDICTIONS  # killed mid-stream, inside a window
        proc = start()
        health = httpx.get(f"{base}/healthz", timeout=5).json()
        # The faust agent, in the group of its own (see services/monitor/streaming.py), is the one consumer.
        assert [c["group"] for c in health["consumers"]] == [CONSUMER_GROUP] == ["driftloop-monitor-faust"]
        wait_for(lambda: status()["predictions_stored"] == PREDICTIONS, "every prediction stored", timeout=180)
        for event in feedback:
            bus.publish(event, wait=False)
        bus.flush()
        wait_for(
            lambda: len(performance_rows(settings.database_url, model)) == PREDICTIONS // 40, "performance windows"
        )
        degraded = read_events(settings, bus, PERFORMANCE_DEGRADED, model)
        final = status()
        quality = httpx.get(f"{base}/v1/monitor/{model}/quality", timeout=5).json()["reports"]
        performance = httpx.get(f"{base}/v1/monitor/{model}/performance", timeout=5).json()["reports"]
    finally:
        bus.close()
        assert stop_pid(proc.pid)

    # The monitor that never stopped: the same events, in the same order, on a database of its own.
    steady_url = f"sqlite:///{tmp_path / 'steady.sqlite'}"
    migrate(steady_url)
    steady_events: list[Event] = []
    steady = MonitorHandlers(
        {model: pipeline}, session_factory(create_engine_for(steady_url)), store, steady_events.append
    )
    steady.on_model_promoted(promoted)
    for event in predictions:
        steady.on_prediction_logged(event)
    for event in feedback:
        steady.on_feedback_received(event)

    restarted_reports = drift_rows(settings.database_url, model)
    assert final["predictions_stored"] == PREDICTIONS  # none lost, none counted twice
    # Hopping windows [0, 60), [30, 90), ... [180, 240) over 260 predictions; the last ones are still open.
    assert [(r[0], r[1], r[2], r[3]) for r in restarted_reports] == [(k, 30.0 * k, 30.0 * k + 60, 60) for k in range(7)]
    assert restarted_reports == drift_rows(steady_url, model)
    assert any(r[4] for r in restarted_reports)  # the shifted half drifts
    assert not restarted_reports[0][4]
    assert final["window_index"] == 7 and final["window_fill"] == PREDICTIONS - 7 * 30

    assert performance_rows(settings.database_url, model) == performance_rows(steady_url, model)
    assert [(r["window_index"], r["value"], r["degraded"]) for r in reversed(performance)][:4] == [
        (0, 1.0, False),
        (1, 1.0, False),
        (2, 1.0, False),
        (3, 0.5, True),
    ]
    assert len(degraded) == sum(r["degraded"] for r in performance) >= 1
    assert degraded[0].payload.metric == "accuracy" and degraded[0].payload.threshold == 0.8
    assert {r["window_index"] for r in quality} == set(range(7))
    assert all(r["quality"]["rows"] == 60 for r in quality)


def test_faust_engine_refused_by_its_group_says_why_and_replaces_its_app(
    make_settings: Callable[..., Settings], unique: str
) -> None:
    """The embedded broker keeps an empty group's assignor protocol: a faust member joining a group that a
    confluent-kafka consumer used is refused (InconsistentGroupProtocolError) and, unwatched, would never consume
    while looking started. The engine notices that nothing is assigned, says why on its consumer status (not
    ready) and replaces its app; once the group is usable again (deleted here), the next app joins."""
    settings = make_settings()
    migrate(settings.database_url)
    group = f"monitor-faust-{unique}"
    topic = Topic(f"test.monitor-refused-{unique}", "ModelPromoted", key="model")
    bus = EventBus(settings, producer_name="test")
    ensure_topics(settings, [topic.name])
    # The group's first member uses the bus consumer's assignors, then leaves: the group is empty.
    assigned = threading.Event()
    consumer = Consumer(bus.consumer_config(group))
    consumer.subscribe([topic.name], on_assign=lambda _c, _p: assigned.set())
    try:
        wait_for(lambda: consumer.poll(0.2) is None and assigned.is_set(), "the bus consumer's assignment")
    finally:
        consumer.close()

    handled: list[Event] = []
    engine = FaustEngine(bus, group, {topic: handled.append}, join_timeout=3)
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: engine.restarts >= 1, "the refused app to be replaced", timeout=90)
        assert engine.status.last_error is not None
        assert "InconsistentGroupProtocolError" in engine.status.last_error
        assert not engine.status.assigned
        assert bus.consumers == [engine.status]  # what /healthz shows: not assigned, so not ready

        admin = AdminClient(settings.kafka_config())
        for future in admin.delete_consumer_groups([group], request_timeout=10).values():
            future.result()
        wait_for(lambda: engine.status.assigned, "the next app to join the deleted group", timeout=90)
        restarts = engine.restarts
    finally:
        stop.set()
        thread.join(timeout=30)
        bus.close()
    assert not thread.is_alive()
    assert restarts >= 1 and not handled


def test_faust_engine_rests_with_its_quiet_process_and_takes_what_came_meanwhile_when_it_wakes(
    make_settings: Callable[..., Settings], unique: str
) -> None:
    """A process that took and published nothing for ``kafka.rest_after_seconds`` rests: the engine stops its faust
    app (ready all the same), leaves what arrives in the topic, and when the process wakes (the doorbell notes
    activity, as ``test_bus`` shows) a new app takes it from the committed offset, each event once."""
    from driftloop.contracts.payloads import ExternalTrigger

    settings = make_settings(kafka={**make_settings().kafka.model_dump(), "rest_after_seconds": 4.0})
    migrate(settings.database_url)
    group = f"monitor-faust-rests-{unique}"
    topic = Topic(f"test.monitor-rests-{unique}", "ExternalTrigger", key="model")
    bus = EventBus(settings, producer_name="rests")
    sender = EventBus(settings, producer_name="sender")  # another process: its publishing does not wake this one
    ensure_topics(settings, [topic.name])

    def send(reason: str) -> Event:
        event = new_event(ExternalTrigger(model=f"m-{unique}", reason=reason), producer="sender")
        sender.publish_raw(topic.name, sender.encode(event), key=event.key.encode())
        sender.flush()
        return event

    handled: list[Event] = []
    engine = FaustEngine(bus, group, {topic: handled.append})
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
    thread.start()
    try:
        first = send("before the rest")
        wait_for(lambda: [e.id for e in handled] == [first.id], "the first event", timeout=90)
        wait_for(lambda: engine.status.extra.get("resting") is True, "the engine to rest", timeout=60)
        assert not engine.status.assigned and engine.restarts == 0
        second = send("during the rest")
        threading.Event().wait(3)
        assert [e.id for e in handled] == [first.id], "a resting engine takes nothing"
        bus.note_activity()  # what the doorbell does
        wait_for(lambda: [e.id for e in handled] == [first.id, second.id], "the event sent during the rest", timeout=90)
        assert engine.status.assigned and engine.status.extra["resting"] is False
    finally:
        stop.set()
        thread.join(timeout=30)
        bus.close()
        sender.close()
    assert not thread.is_alive() and engine.restarts == 0 and engine.failed == 0
