"""``kill -9`` of the training service inside a fit, then a restart (the service as its own process, real Ray and
broker): the interrupted run is executed again with no human step, the request gives exactly one run and one
TrainingCompleted, and no Ray process of the killed service is left once the new one has started and stopped."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pipeline_support import collect_events, demo_pipeline, service_runtime, write_pipeline
from training_support import request_event, write_feature_set

from driftloop.clients.objectstore import open_object_store
from driftloop.contracts.settings import Settings, settings_env
from driftloop.contracts.topics import TRAINING_COMPLETED
from driftloop.ops.procs import free_port, http_ready, spawn, stop_pid, wait_until
from driftloop.runtime import ownedprocs
from driftloop.services.training.raycluster import RAY_PROCS

pytestmark = pytest.mark.integration


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_a_training_killed_in_its_fit_runs_the_request_again_once_and_leaves_no_ray_process(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str
) -> None:
    stream, model = f"tx-{unique}", f"fraud-{unique}"
    # Enough rounds that the fit lasts a few seconds: the kill lands inside it.
    slow = {"params": {"n_estimators": 1000, "num_leaves": 31, "learning_rate": 0.01, "min_child_samples": 5}}
    pipeline = write_pipeline(tmp_path / "pipelines", model, demo_pipeline(stream, model, model=slow))
    settings = make_settings(pipelines_dir=tmp_path / "pipelines", ray={"num_cpus": 1, "local_fit_max_rows": 0})
    write_feature_set(open_object_store(settings), pipeline, 1, 3000)
    port = free_port()
    env = {**settings_env(settings), "DRIFTLOOP_SERVICES__TRAINING_PORT": str(port)}
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "training.out"

    def start() -> int:
        proc = spawn([sys.executable, "-m", "driftloop.services.training"], out, env)
        wait_until(lambda: http_ready(f"{url}/healthz"), 180, "the training service")
        return proc.pid

    first = start()
    with service_runtime("test", settings) as runtime:
        request = request_event(model, f"req-{uuid.uuid4().hex[:8]}", f"{stream}@v1")
        runtime.bus.publish(request)

        def fitting() -> bool:
            pids = ownedprocs.alive(settings.home, RAY_PROCS)
            return any("fit_feature_set" in command_line(pid) for pid in pids)

        ownedprocs_seen: list[int] = []

        def in_fit() -> bool:
            # The worker running the fit appears below raylet once the task starts (the service records it
            # after the fit; the tree is read here directly).
            tree = ownedprocs.descendants(ownedprocs.alive(settings.home, RAY_PROCS))
            ownedprocs_seen[:] = tree
            return any("fit_feature_set" in command_line(pid) for pid in tree)

        wait_until(in_fit, 180, "the fit to run on Ray")
        left_by_first = {pid: ownedprocs.start_ticks(pid) for pid in ownedprocs_seen}
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: ownedprocs.start_ticks(first) is None, 10, "the killed service to be gone")

        second = start()
        try:
            # The new process stopped what the killed one left behind: none of its Ray processes still runs.
            survivors = [pid for pid, ticks in left_by_first.items() if ticks and ownedprocs.start_ticks(pid) == ticks]
            assert survivors == [], [command_line(pid) for pid in survivors]

            def completed() -> bool:
                runs = httpx.get(f"{url}/v1/runs", params={"model": model}).json()["runs"]
                return bool(runs) and runs[0]["state"] in ("completed", "failed")

            wait_until(completed, 300, "the interrupted run to complete")
            runs = httpx.get(f"{url}/v1/runs", params={"model": model}).json()["runs"]
            assert [(r["request_id"], r["state"], r["attempts"]) for r in runs] == [
                (request.payload.request_id, "completed", 2)
            ], runs[0].get("error")
            done = collect_events(
                runtime.bus,
                TRAINING_COMPLETED.name,
                lambda e: e.payload.request_id == request.payload.request_id,
                1,
                timeout=60,
                linger=3,
            )
            assert len(done) == 1 and done[0].payload.run_id == runs[0]["run_id"]
            assert not fitting()
        finally:
            assert stop_pid(second)
    # Stopped cleanly: every Ray process it started is gone and nothing is left recorded.
    assert ownedprocs.alive(settings.home, RAY_PROCS) == []
    assert not ownedprocs.procs_file(settings.home, RAY_PROCS).exists(), out.read_text()[-2000:]
