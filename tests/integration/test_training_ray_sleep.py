"""The training service's local Ray (real Ray, broker and SQLite) shuts down after ``ray.idle_shutdown_seconds``
with no work, its recorded processes gone; a cut starting or a pipeline applied wakes it, and a request that finds it
asleep wakes it, waits for it and completes."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pipeline_support import consuming, demo_pipeline, service_runtime, write_pipeline
from training_support import request_event, wait_for_run, write_feature_set

from driftloop.clients.objectstore import open_object_store
from driftloop.contracts.events import new_event
from driftloop.contracts.payloads import DatasetCutStarted
from driftloop.contracts.settings import Settings
from driftloop.contracts.topics import DOORBELL_RECORDS, PIPELINE_APPLIED
from driftloop.ops.procs import wait_until
from driftloop.runtime import ownedprocs
from driftloop.runtime.bus import EventBus
from driftloop.services.training.raycluster import RAY_PROCS, ray_ready, ray_state, shutdown_ray
from driftloop.services.training.service import build

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def ray_stopped_after() -> Iterator[None]:
    yield
    shutdown_ray()


def test_an_idle_local_ray_shuts_down_and_the_next_run_wakes_it(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str
) -> None:
    stream, model = f"tx-{unique}", f"fraud-{unique}"
    pipeline = write_pipeline(tmp_path / "pipelines", model, demo_pipeline(stream, model))
    ray = {"num_cpus": 1, "idle_shutdown_seconds": 3, "warm_workers": False, "local_fit_max_rows": 0}
    kafka = {**make_settings().kafka.model_dump(), "rest_after_seconds": 2.0}
    settings = make_settings(pipelines_dir=tmp_path / "pipelines", ray=ray, kafka=kafka)
    write_feature_set(open_object_store(settings), pipeline, 1, 400)
    with service_runtime("training", settings) as runtime:
        spec = build(runtime)
        consumer, _features = spec.consumers
        # The process's pipeline follower: it hears the doorbell.
        follower = threading.Thread(
            target=runtime.bus.run_consumer,
            args=(f"bell-{unique}", {PIPELINE_APPLIED: lambda _e: None}),
            kwargs={"broadcast": True, "fetch_wait_ms": 500, "doorbell": True},
            daemon=True,
        )
        follower.start()
        with consuming(runtime, consumer, unique):
            assert ray_state() == "asleep" and ray_ready()  # no work yet: not started, and ready by design
            first = request_event(model, f"req-{uuid.uuid4().hex[:8]}", None)
            runtime.bus.publish(first)
            assert wait_for_run(runtime, first.payload.request_id).state == "completed"
            awake = {pid: ownedprocs.start_ticks(pid) for pid in ownedprocs.alive(settings.home, RAY_PROCS)}
            assert awake, "the local Ray's processes are on record while it is awake"
            service_nice = os.getpriority(os.PRIO_PROCESS, os.getpid())
            # Ray's own workers are nicer still (Ray adds its worker niceness to the raylet's).
            assert min(os.getpriority(os.PRIO_PROCESS, pid) for pid in awake) == min(19, service_nice + 10), (
                "Ray's processes yield the CPU (ray.niceness)"
            )
            assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == service_nice

            wait_until(lambda: ray_state() == "asleep", 60, "the idle Ray to shut down")
            assert ray_ready()
            assert [pid for pid, ticks in awake.items() if ownedprocs.start_ticks(pid) == ticks] == []
            assert not ownedprocs.procs_file(settings.home, RAY_PROCS).exists()

            # A cut starting is a sign of work: Ray wakes before any request.
            cut = DatasetCutStarted(stream=stream, dataset_version_id=f"{stream}@v2", version=2, new_rows=100)
            runtime.bus.publish(new_event(cut, producer="test"))
            wait_until(lambda: ray_state() == "awake", 60, "a cut starting to wake Ray")
            wait_until(lambda: ray_state() == "asleep", 60, "Ray idle again")

            # So is a pipeline applied: its stream is about to come.
            other = f"fraud-{unique}-b"
            runtime.pipelines.put(write_pipeline(tmp_path / "more", other, demo_pipeline(f"tx-{other}", other)))
            wait_until(lambda: ray_state() == "awake", 60, "a pipeline applied to wake Ray")
            wait_until(lambda: ray_state() == "asleep", 60, "Ray idle again")

            # And records arriving at ingestion after a quiet spell: their doorbell wakes the resting process.
            wait_until(runtime.bus.resting, 30, "the quiet training process to rest")
            ringer = EventBus(settings, producer_name=f"ingestion-{unique}")
            try:
                ringer.ring_doorbell(DOORBELL_RECORDS)
                ringer.flush()
                wait_until(lambda: ray_state() == "awake", 60, "records arriving to wake Ray")
            finally:
                ringer.close()
            wait_until(lambda: ray_state() == "asleep", 60, "Ray idle again")

            second = request_event(model, f"req-{uuid.uuid4().hex[:8]}", None)
            runtime.bus.publish(second)
            run = wait_for_run(runtime, second.payload.request_id)
            assert run.state == "completed", run.error
            assert ownedprocs.alive(settings.home, RAY_PROCS)
        follower.join(timeout=30)


def test_a_small_fit_runs_without_waking_a_sleeping_ray_and_a_bigger_one_wakes_it(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str
) -> None:
    stream, model = f"tx-{unique}", f"fraud-{unique}"
    pipeline = write_pipeline(tmp_path / "pipelines", model, demo_pipeline(stream, model))
    ray = {"num_cpus": 1, "idle_shutdown_seconds": 60, "warm_workers": False, "local_fit_max_rows": 1000}
    settings = make_settings(pipelines_dir=tmp_path / "pipelines", ray=ray)
    store = open_object_store(settings)
    write_feature_set(store, pipeline, 1, 400)
    with service_runtime("training", settings) as runtime:
        spec = build(runtime)
        consumer, _features = spec.consumers
        client = TestClient(spec.app)
        with consuming(runtime, consumer, unique):
            assert ray_state() == "asleep"
            first = request_event(model, f"req-{uuid.uuid4().hex[:8]}", f"{stream}@v1")
            runtime.bus.publish(first)
            run = wait_for_run(runtime, first.payload.request_id)
            assert run.state == "completed", run.error
            log = client.get(f"/v1/runs/{run.run_id}/logs").text
            assert "the fit ran in the training service's process: Ray was asleep" in log
            assert "holdout metrics" in log and "the fit ran on Ray" not in log
            assert ray_state() == "asleep"  # not woken for it: a small fit does not need Ray

            # A feature set past ray.local_fit_max_rows wakes Ray and runs on it.
            write_feature_set(store, pipeline, 2, 1500)
            second = request_event(model, f"req-{uuid.uuid4().hex[:8]}", f"{stream}@v2")
            runtime.bus.publish(second)
            run = wait_for_run(runtime, second.payload.request_id)
            assert run.state == "completed", run.error
            log = client.get(f"/v1/runs/{run.run_id}/logs").text
            assert "the fit ran on Ray" in log and "training service's process" not in log
