"""The web dashboard against a running stack, opened in headless Chromium.

A real cascade is made with the registry, serving, monitor and dashboard processes on the real broker: the test
plays the training side (it publishes TrainingRequested/TrainingCompleted with small real LightGBM models),
the registry gates and promotes, serving switches, the monitor sees drifted predictions and emits DriftDetected,
and the drift's retrain is promoted and served. Then Chromium renders the dashboard's pages and the test checks
what they show: the model's versions with their aliases and statuses, and a timeline explaining the cascade.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from model_factory import feature_frame, make_pipeline, put_feature_set
from stack_support import TrainingData, drift_window_pipelines, play_training, post_drifted_traffic

from driftloop.clients.db import create_engine_for, migrate
from driftloop.clients.db.models import EventRecord
from driftloop.clients.objectstore import open_object_store
from driftloop.contracts.events import Envelope, Event, new_event
from driftloop.contracts.payloads import DriftDetected, ExternalTrigger
from driftloop.contracts.settings import Settings, settings_env
from driftloop.ops.procs import free_port, http_ready, pid_alive, spawn, stop_pid, wait_until
from driftloop.runtime.bus import EventBus

pytestmark = pytest.mark.integration

PROCESSES = ("registry", "serving", "monitor", "dashboard")
WINDOW = 40  # predictions per drift window: small, so one request fills it
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def render(url: str) -> str:
    """The DOM of ``url`` after Chromium loaded it (headless, nothing from the internet)."""
    assert CHROMIUM, "Debian's chromium is needed: infra/setup-system.sh installs it"
    with tempfile.TemporaryDirectory(prefix="driftloop-chromium-") as profile:
        done = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                f"--user-data-dir={profile}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class StackRun:
    """What the module's stack went through, for the tests to check."""

    def __init__(self, settings: Settings, model: str, tmp: Path) -> None:
        self.settings = settings
        self.model = model
        self.tmp = tmp
        self.engine = create_engine_for(settings.database_url)
        self.drift: Event | None = None

    def url(self, service: str, path: str) -> str:
        return self.settings.services.url(service) + path

    def events(self, event_type: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(EventRecord)
                    .where(EventRecord.event_type == event_type, EventRecord.model == self.model)
                    .order_by(EventRecord.occurred_at)
                ).all()
            )


@pytest.fixture(scope="module")
def cascade(broker, schema_registry_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackRun]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("dashboard")
    unique = uuid.uuid4().hex[:8]
    model, stream = f"dash-{unique}", f"dash-{unique}"
    pipelines = drift_window_pipelines(tmp / "pipelines", model, stream, WINDOW)
    settings = Settings(
        home=tmp / "home",
        pipelines_dir=pipelines,
        kafka={"bootstrap_servers": broker.bootstrap_servers, "session_timeout_ms": 2000},
        schema_registry={"url": schema_registry_url},
        # Training is not started: its port is a free one, so the dashboard finds nothing there.
        services={f"{name}_port": free_port() for name in (*PROCESSES, "training")},
    )
    migrate(settings.database_url)
    pipeline = make_pipeline(model=model, stream=stream)
    store = open_object_store(settings)
    features = feature_frame(pipeline, rows=1500)
    trained = TrainingData(pipeline, store, features, put_feature_set(store, stream, 1, features))
    state = StackRun(settings, model, tmp)
    procs = {
        name: spawn([sys.executable, "-m", f"driftloop.services.{name}"], tmp / f"{name}.out", settings_env(settings))
        for name in PROCESSES
    }
    bus = EventBus(settings, producer_name="test-training")
    try:
        for name in PROCESSES:
            wait_until(lambda name=name: http_ready(state.url(name, "/healthz")), 120, f"the {name} process")

        def train(cause: Event, run_id: str, *, quality: str, rounds: int, trigger: str) -> None:
            """Play the training service: a request caused by ``cause``, then the completed run."""
            play_training(
                bus, trained, cause, run_id, trigger=trigger, reason=f"test: {trigger}", rounds=rounds, quality=quality
            )

        def serving_version() -> int | None:
            response = httpx.get(state.url("serving", f"/v1/models/{model}"))
            return response.json()["version"] if response.status_code == 200 else None

        # 1. Bootstrap: an external trigger, a weak first version, promoted and served.
        root = new_event(ExternalTrigger(model=model, reason="bootstrap", details_json="{}"), producer="t")
        bus.publish(root)
        train(root, f"run1-{unique}", quality="good", rounds=2, trigger="external")
        wait_until(lambda: serving_version() == 1, 90, "serving v1")
        wait_until(
            lambda: httpx.get(state.url("monitor", f"/v1/monitor/{model}")).json()["version"] == 1, 60, "monitor v1"
        )

        # 2. Drifted traffic: amounts 30 times larger, only night hours. The monitor detects it.
        post_drifted_traffic(state.url("serving", ""), model, WINDOW)
        wait_until(lambda: bool(state.events("DriftDetected")), 90, "the monitor's DriftDetected")
        row = state.events("DriftDetected")[0]
        envelope = Envelope(row.event_id, row.event_type, row.occurred_at, row.caused_by, row.cascade_id, row.producer)
        drift = state.drift = Event(envelope=envelope, payload=DriftDetected.from_avro(row.payload))

        # 3. The drift's retrain: a stronger model, promoted over v1, served.
        train(drift, f"run2-{unique}", quality="good", rounds=40, trigger="drift")
        wait_until(lambda: serving_version() == 2, 90, "serving v2")
        # 4. A manual retrain that learns noise: rejected by the gate, v2 keeps serving.
        manual = new_event(ExternalTrigger(model=model, reason="try noise", details_json="{}"), producer="t")
        bus.publish(manual)
        train(manual, f"run3-{unique}", quality="bad", rounds=5, trigger="manual")
        wait_until(lambda: bool(state.events("ModelRejected")), 60, "the gate's rejection of v3")
        wait_until(lambda: len(state.events("ServingSwitched")) >= 2, 30, "ServingSwitched v2 in the event log")
        yield state
    finally:
        bus.close()
        for proc in procs.values():
            stop_pid(proc.pid)
        assert not any(pid_alive(p.pid) for p in procs.values())


def test_model_page_shows_versions_aliases_and_the_explained_timeline(cascade: StackRun) -> None:
    dom = render(cascade.url("dashboard", f"/models/{cascade.model}"))

    # Versions with aliases and statuses, served version.
    assert f'data-model="{cascade.model}"' in dom
    for version in (1, 2, 3):
        assert f'data-version="{version}"' in dom
    v2_row = dom.split('data-version="2"', 1)[1].split("</tr>", 1)[0]
    assert '<span class="alias">champion</span>' in v2_row and "promoted" in v2_row
    v3_row = dom.split('data-version="3"', 1)[1].split("</tr>", 1)[0]
    assert "rejected" in v3_row and 'class="alias"' not in v3_row
    assert 'id="served">v2<' in dom
    assert "champion → v2" in dom

    # The drift cascade explains itself: which drift, which retrain, which gate numbers, the serving switch.
    assert cascade.drift is not None
    block = dom.split(f'data-cascade-id="{cascade.drift.envelope.cascade_id}"', 1)[1].split("</section>", 1)[0]
    assert "promoted v2" in block
    assert "Why: drift detected on v1" in block and "amount" in block
    assert "Retrain: requested by the 'drift' trigger" in block
    assert "Gate: v2 promoted on roc_auc: challenger " in block and "champion v1 " in block
    assert "Serving: replica " in block and "switched to v2 (was v1)" in block
    for event_type in ("DriftDetected", "TrainingRequested", "TrainingCompleted", "ModelPromoted", "ServingSwitched"):
        assert f'data-event-type="{event_type}"' in block
    assert cascade.drift.id in block  # each step with its event id
    # The rejected manual retrain has its own cascade, with the gate numbers that kept v2.
    assert "rejected v3" in dom and "Gate: v3 rejected on roc_auc" in dom

    # Drift charts per feature, with the drifted window marked.
    for feature in ("amount", "log_amount", "hour", "merchant_category"):
        assert f'data-feature="{feature}"' in dom
    assert 'class="alarm"' in dom
    # Training is not running in this stack: the runs section says so instead of failing the page.
    assert "training unavailable" in dom


def test_overview_lists_the_model_with_champion_and_served_version(cascade: StackRun) -> None:
    dom = render(cascade.url("dashboard", "/"))
    row = dom.split(f'data-model="{cascade.model}"', 1)[1].split("</tr>", 1)[0]
    cells = [c.split(">", 1)[1] for c in row.split("<td")[1:]]
    assert cells[2].startswith("2<") and cells[3].startswith("2<") and cells[4].startswith("3<"), cells
    latest = httpx.get(cascade.url("dashboard", f"/v1/timeline/{cascade.model}")).json()["cascades"][0]
    assert cells[5].startswith(f"{latest['root_event_type']}: {latest['outcome']}<"), cells


def test_timeline_api_gives_each_step_with_event_id_and_time(cascade: StackRun) -> None:
    response = httpx.get(cascade.url("dashboard", f"/v1/timeline/{cascade.model}"))
    assert response.status_code == 200
    found = {c["cascade_id"]: c for c in response.json()["cascades"]}
    assert cascade.drift is not None
    drift_cascade = found[cascade.drift.envelope.cascade_id]
    types = [s["event_type"] for s in drift_cascade["steps"]]
    assert types[0] == "DriftDetected" and types[-1] == "ServingSwitched", types
    for expected in ("TrainingRequested", "TrainingCompleted", "ModelRegistered", "ModelPromoted"):
        assert expected in types
    assert drift_cascade["outcome"] == "promoted v2"
    assert all(s["event_id"] and s["occurred_at"] for s in drift_cascade["steps"])
    # Each step but the root names its cause, inside the same cascade.
    ids = {s["event_id"] for s in drift_cascade["steps"]}
    assert all(s["caused_by"] in ids for s in drift_cascade["steps"][1:])
    assert httpx.get(cascade.url("dashboard", "/v1/timeline/no-such-model")).status_code == 404
    assert httpx.get(cascade.url("dashboard", "/models/no-such-model")).status_code == 404
    bad_refresh = httpx.get(cascade.url("dashboard", f"/models/{cascade.model}"), params={"refresh": -1})
    assert bad_refresh.status_code == 422 and "refresh" in bad_refresh.text


def test_dashboard_exposes_prometheus_metrics(cascade: StackRun) -> None:
    body = httpx.get(cascade.url("dashboard", "/metrics")).text
    assert 'driftloop_http_requests_total{method="GET",route="/models/{model}",status="200"}' in body
    serving = httpx.get(cascade.url("serving", "/metrics")).text
    assert 'driftloop_events_consumed_total{event_type="ModelPromoted"' in serving
    assert "driftloop_consumer_lag{" in serving
