"""Serving under load, on the real broker: every answered row becomes exactly one PredictionLogged event (counted by
reading the topic back: requests x rows, none lost, none doubled) and one serving_predictions row with its inputs,
while a promotion is hot-swapped in with no failed request; and ``serving.workers`` processes behind one port, each
following promotions and stopped by one SIGTERM."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from model_factory import feature_frame, make_pipeline, put_artifact, train_artifact, write_pipeline_dir
from pipeline_support import collect_events, wait_for
from serving_support import HttpServer, Stack, rows

from driftloop.clients.db import migrate
from driftloop.clients.db.models import EventRecord, ServedPrediction
from driftloop.clients.objectstore import open_object_store
from driftloop.contracts.events import new_event
from driftloop.contracts.payloads import ModelPromoted
from driftloop.contracts.settings import Settings, settings_env
from driftloop.contracts.topics import PREDICTION_LOGGED
from driftloop.ops.procs import free_port, http_ready, pid_alive, spawn, stop_pid, wait_until
from driftloop.runtime.bus import EventBus

pytestmark = pytest.mark.integration

THREADS = 6
REQUESTS_PER_THREAD = 20
ROWS_CYCLE = (1, 3, 10)


def test_every_answered_row_is_logged_once_under_load_and_a_hot_swap(stack: Stack) -> None:
    stack.complete_training("run-1", rounds=5)
    wait_for(lambda: stack.served_version() == 1, "serving to load v1")
    server = HttpServer(stack.serving.spec.app, free_port())
    answered: list[dict[str, Any]] = []
    failures: list[str] = []
    lock = threading.Lock()
    go = threading.Event()

    def client(t: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            go.wait()
            for i in range(REQUESTS_PER_THREAD):
                batch = rows(ROWS_CYCLE[(t + i) % len(ROWS_CYCLE)])
                response = http.post(f"/v1/models/{stack.model}/predict", json={"instances": batch})
                with lock:
                    if response.status_code == 200:
                        answered.append(response.json())
                    else:
                        failures.append(f"{response.status_code} {response.text}")

    threads = [threading.Thread(target=client, args=(t,)) for t in range(THREADS)]
    try:
        for thread in threads:
            thread.start()
        go.set()
        stack.complete_training("run-2", rounds=40)  # promoted and swapped in while the requests run
        for thread in threads:
            thread.join(timeout=120)
        wait_for(lambda: stack.served_version() == 2, "serving to swap to v2")
        after = stack.predict(rows(2))
        assert after.status_code == 200 and after.json()["version"] == 2
        answered.append(after.json())
    finally:
        server.stop()

    assert failures == []
    assert len(answered) == THREADS * REQUESTS_PER_THREAD + 1
    expected = {(a["request_id"], i, a["version"]) for a in answered for i in range(len(a["predictions"]))}
    logged = collect_events(
        stack.serving.runtime.bus,
        PREDICTION_LOGGED.name,
        lambda e: e.payload.model == stack.model,
        count=len(expected),
        linger=2,
    )
    keys = [(e.payload.request_id, e.payload.index, e.payload.version) for e in logged]
    assert len(keys) == len(set(keys))  # none doubled
    assert set(keys) == expected  # none lost, each with the version that answered it
    by_key = {(a["request_id"], i): p for a in answered for i, p in enumerate(a["predictions"])}
    assert all(e.payload.prediction == by_key[(e.payload.request_id, e.payload.index)] for e in logged)

    # The rows' database record is serving's table, with the inputs the events carry; the event log has no copy.
    engine = stack.serving.runtime.engine
    requests = sorted({a["request_id"] for a in answered})

    def stored() -> list[Any]:
        with engine.connect() as conn:
            return conn.execute(sa.select(ServedPrediction).where(ServedPrediction.request_id.in_(requests))).all()

    wait_for(lambda: len(stored()) >= len(expected), "serving to record every answered row")
    recorded = {(r.request_id, r.row_index, r.version): r.inputs for r in stored()}
    assert len(stored()) == len(expected) and set(recorded) == expected
    assert all(recorded[(e.payload.request_id, e.payload.index, e.payload.version)] == e.payload.inputs for e in logged)
    with engine.connect() as conn:
        copies = conn.scalar(
            sa.select(sa.func.count()).select_from(EventRecord).where(EventRecord.event_type == "PredictionLogged")
        )
    assert copies == 0


def test_workers_share_one_port_and_each_follows_promotions(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str
) -> None:
    model, stream = f"fraud-{unique}", f"tx-{unique}"
    pipelines = write_pipeline_dir(tmp_path / "pipelines", model, stream)
    settings = make_settings(
        pipelines_dir=pipelines,
        services={"serving_port": free_port()},
        serving={"workers": 2, "verify_with_registry": False},
    )
    migrate(settings.database_url)
    pipeline = make_pipeline(model=model, stream=stream)
    artifact = train_artifact(pipeline, feature_frame(pipeline, rows=1000), rounds=5)
    uri, sha = put_artifact(open_object_store(settings), model, "run-1", artifact)
    url = settings.services.url("serving")
    proc = spawn([sys.executable, "-m", "driftloop.services.serving"], tmp_path / "serving.out", settings_env(settings))
    try:
        wait_until(lambda: http_ready(f"{url}/healthz"), 90, "the serving workers")
        bus = EventBus(settings, producer_name="test")
        bus.publish(
            new_event(
                ModelPromoted(model=model, version=1, alias="champion", previous_version=None, artifact_uri=uri,
                              artifact_sha256=sha, dataset_version_id=f"{stream}@v1", feature_set_uri="file:///f",
                              reason="test", gate_json="{}"),
                producer="test",
            )
        )  # fmt: skip
        bus.close()

        replicas: dict[str, int] = {}

        def both_workers_serve_v1() -> bool:
            # A new connection per request: the kernel hands connections to either worker.
            health = httpx.get(f"{url}/healthz", timeout=10).json()
            replicas[health["replica"]] = health["models_loaded"]
            return len(replicas) == 2 and all(loaded == 1 for loaded in replicas.values())

        wait_until(both_workers_serve_v1, 90, "two workers, each serving v1")
        pids = {int(replica.rsplit("-", 2)[1]) for replica in replicas}
        assert proc.pid not in pids and len(pids) == 2
        for _ in range(10):
            response = httpx.post(f"{url}/v1/models/{model}/predict", json={"instances": rows(2)}, timeout=10)
            assert response.status_code == 200 and response.json()["version"] == 1
    finally:
        stop_pid(proc.pid, timeout=30)
    assert not pid_alive(proc.pid)
    assert not any(pid_alive(pid) for pid in pids)
    assert "Traceback" not in (tmp_path / "serving.out").read_text()
