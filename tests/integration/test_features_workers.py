"""``features.workers``: the service runs that many HTTP processes behind its one port. The first binds the port,
runs the consumers and starts the others; each answers lookups and tells the same readiness."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from driftloop.clients.db import create_engine_for, migrate
from driftloop.contracts.settings import Settings, settings_env
from driftloop.ops.procs import free_port, http_ready, spawn, stop_pid, wait_until
from driftloop.services.features.onlinestore import open_online_store

pytestmark = pytest.mark.integration


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def test_two_processes_share_the_port_and_each_answers(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str
) -> None:
    settings = make_settings(
        security={"enabled": False}, features={"workers": 2, "streaming": False}, spark={"warm_at_start": False}
    )
    migrate(settings.database_url)
    engine = create_engine_for(settings.database_url)
    at = datetime(2026, 5, 1, tzinfo=UTC)
    open_online_store(settings, engine).write(
        [{"stream": "transactions", "entity": f"w-{unique}", "values": {"amount": 4.5}, "event_time": at}]
    )
    port = free_port()
    env = {**settings_env(settings), "DRIFTLOOP_SERVICES__FEATURES_PORT": str(port)}
    proc = spawn([sys.executable, "-m", "driftloop.services.features"], tmp_path / "features.out", env)
    url = f"http://127.0.0.1:{port}"
    stopped = False
    try:
        wait_until(lambda: http_ready(f"{url}/healthz"), 120, "the features service")
        wait_until(lambda: httpx.get(f"{url}/healthz").json()["ready"], 60, "the features service to be ready")
        wait_until(lambda: len(children(proc.pid)) == 1, 60, "its HTTP worker")
        [worker] = children(proc.pid)
        # The first process copies its readiness to the workers once a second (workers.supervise): let it.
        time.sleep(2.0)

        # The first process stopped: every connection goes to the worker, which answers on its own.
        os.kill(proc.pid, signal.SIGSTOP)
        stopped = True
        health = httpx.get(f"{url}/healthz", timeout=30).json()
        assert health["pid"] == worker and health["ready"] is True  # the first process's consumers are assigned
        body = httpx.post(
            f"{url}/v1/features/online", json={"stream": "transactions", "entities": [f"w-{unique}", "nobody"]}
        ).json()
        assert body["values"][f"w-{unique}"]["amount"] == 4.5 and body["missing"] == ["nobody"]
        os.kill(proc.pid, signal.SIGCONT)
        stopped = False
    finally:
        if stopped:
            os.kill(proc.pid, signal.SIGCONT)
        stop_pid(proc.pid)
        engine.dispose()
    # Stopping the first process stops its worker.
    wait_until(lambda: not alive(worker), 30, "the worker to stop")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
