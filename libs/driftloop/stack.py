"""The embedded stack: broker, schema registry and every service as separate processes on this machine.

``up`` migrates the database, starts what the settings say is embedded (Tansu broker, our schema registry),
creates the topics, starts the services, waits until each is healthy and records the PIDs in
``<home>/stack.json``. ``down`` stops them by PID, newest first. Logs: ``<home>/logs/<component>.log``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from driftloop.broker import EmbeddedBroker
from driftloop.bus import EventBus, ensure_event_topics, ensure_topics
from driftloop.db import migrate
from driftloop.errors import StackError
from driftloop.pipeline import load_pipelines
from driftloop.procs import http_ready, pid_alive, port_open, spawn, stop_pid, wait_until
from driftloop.security import ensure_admin_token, token_file
from driftloop.settings import Settings, settings_env

# The dashboard last: it only reads the others (event log, HTTP APIs).
SERVICES = ("ingestion", "features", "training", "registry", "serving", "monitor", "triggers", "dashboard")


@dataclass
class Component:
    name: str
    pid: int
    url: str
    log: str
    health_url: str | None

    def health(self) -> dict[str, Any]:
        alive = pid_alive(self.pid)
        info: dict[str, Any] = {**asdict(self), "alive": alive, "healthy": False, "ready": False}
        if not alive:
            return info
        if self.health_url is None:
            host, _, port = self.url.removeprefix("kafka://").rpartition(":")
            info["healthy"] = info["ready"] = port_open(host, int(port))
            return info
        try:
            response = httpx.get(self.health_url, timeout=2.0)
            info["healthy"] = response.status_code == 200
            body = response.json() if info["healthy"] else {}
            info["ready"] = bool(body.get("ready", info["healthy"])) if isinstance(body, dict) else info["healthy"]
        except (httpx.HTTPError, ValueError):
            pass
        return info


def child_environment(settings: Settings) -> dict[str, str]:
    """What every service process gets: the settings as DRIFTLOOP_* plus Spark and Ray's local-only knobs."""
    env = settings_env(settings)
    env.update(
        {
            "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
            "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
            "PYSPARK_DRIVER_PYTHON": os.environ.get("PYSPARK_DRIVER_PYTHON", sys.executable),
            "RAY_USAGE_STATS_ENABLED": "0",
            # Without this Ray binds to the machine's network address instead of loopback.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class Stack:
    def __init__(self, settings: Settings, on_progress: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.home = settings.home.resolve()
        self.state_file = self.home / "stack.json"
        self.say = on_progress or (lambda _msg: None)

    # --- state -------------------------------------------------------------------------------------------

    def components(self) -> list[Component]:
        if not self.state_file.is_file():
            return []
        data = json.loads(self.state_file.read_text())
        return [Component(**c) for c in data["components"]]

    def _save(self, components: list[Component]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        data = {"started_at": time.time(), "components": [asdict(c) for c in components]}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.state_file)

    def status(self) -> list[dict[str, Any]]:
        return [c.health() for c in self.components()]

    # --- up / down ---------------------------------------------------------------------------------------

    def up(self, timeout: float = 240.0) -> list[Component]:
        running = [c for c in self.components() if pid_alive(c.pid)]
        if running:
            raise StackError(
                f"a stack is already running from {self.state_file} ({', '.join(c.name for c in running)}): "
                "run `driftloop down` first"
            )
        pipelines = load_pipelines(self.settings.pipelines_dir)  # fail early on a bad pipeline file
        log_dir = self.settings.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        components: list[Component] = []
        if ensure_admin_token(self.settings) and not self.settings.security.admin_tokens:
            self.say(f"security: admin token in {token_file(self.settings)} (mode 600; the CLI reads it)")
        try:
            self.say(f"database: migrating {self._safe_db_url()}")
            migrate(self.settings.database_url)
            if self.settings.kafka.embedded:
                host, _, port = self.settings.kafka.bootstrap_servers.rpartition(":")
                broker = EmbeddedBroker(port=int(port), host=host or "127.0.0.1", log_path=log_dir / "broker.log")
                pid = broker.start()
                components.append(
                    Component("broker", pid, f"kafka://{broker.bootstrap_servers}", str(log_dir / "broker.log"), None)
                )
                self._save(components)
                self.say(f"broker (Tansu) on {broker.bootstrap_servers}, pid {pid}")
            if self.settings.schema_registry.embedded:
                components.append(self._start_service("schemaregistry"))
                self._save(components)
                self._wait_ready(components[-1], timeout)
            self.say("topics: creating event and stream topics")
            ensure_event_topics(self.settings)
            self.say("schemas: registering the event schemas")
            EventBus(self.settings, producer_name="driftloop-cli").register_event_schemas()
            ensure_topics(self.settings, [cfg.stream.topic for cfg in pipelines.values()])
            for name in SERVICES:
                components.append(self._start_service(name))
                self._save(components)
            for component in components:
                self._wait_ready(component, timeout)
        except BaseException:
            self.say("start failed: stopping what was started")
            self._stop_all(components)
            raise
        return components

    def _safe_db_url(self) -> str:
        url = self.settings.database_url
        if "@" in url and "://" in url:
            scheme, rest = url.split("://", 1)
            return f"{scheme}://***@{rest.split('@', 1)[1]}"
        return url

    def _start_service(self, name: str) -> Component:
        services = self.settings.services
        port = services.port(name)
        if port_open(services.host, port):
            raise StackError(f"port {port} for {name} is in use: set DRIFTLOOP_SERVICES__{name.upper()}_PORT")
        log_dir = self.settings.log_dir
        proc = spawn(
            [sys.executable, "-m", f"driftloop.services.{name}"],
            log_dir / f"{name}.out",
            env=child_environment(self.settings),
        )
        url = services.url(name)
        self.say(f"{name}: starting on {url}, pid {proc.pid}")
        return Component(name, proc.pid, url, str(log_dir / f"{name}.log"), f"{url}/healthz")

    def _wait_ready(self, component: Component, timeout: float) -> None:
        if component.health_url is None:
            return

        def ready() -> bool:
            if not pid_alive(component.pid):
                raise StackError(
                    f"{component.name} exited during start: see {component.log} "
                    f"and {Path(component.log).with_suffix('.out')}"
                )
            return http_ready(component.health_url or "")

        wait_until(ready, timeout, f"{component.name} to be ready (see {component.log})")
        self.say(f"{component.name}: ready")

    def down(self) -> list[str]:
        components = self.components()
        stopped = self._stop_all(components)
        if self.state_file.exists():
            self.state_file.unlink()
        return stopped

    def _stop_all(self, components: list[Component]) -> list[str]:
        stopped = []
        for component in reversed(components):
            if stop_pid(component.pid, timeout=20.0):
                stopped.append(component.name)
                self.say(f"{component.name}: stopped (pid {component.pid})")
            else:
                self.say(f"{component.name}: pid {component.pid} did not stop")
        return stopped
