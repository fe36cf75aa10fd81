"""The embedded stack: broker, schema registry and every service as separate processes on this machine.

``up`` migrates the database, starts what the settings say is embedded (Tansu broker, our schema registry),
creates the topics, starts the services, waits until each is healthy and records the PIDs in
``<home>/stack.json``. ``down`` stops them by PID, newest first. Logs: ``<home>/logs/<component>.log``.

With ``prometheus=True`` (``driftloop up --prometheus``) it also starts a Prometheus server (the ``prometheus``
binary, Debian's package) scraping every service it started, with a config made by ``prometheus_config`` from the
project's ``infra/prometheus/prometheus.yml`` (same jobs, paths and labels; targets where these settings run them).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from driftloop.clients.credentials import ensure_admin_token, token_file
from driftloop.clients.db import migrate
from driftloop.clients.http import http_ready, probe_health
from driftloop.contracts.pipeline import PipelineConfig, load_pipelines
from driftloop.contracts.settings import Settings, settings_env
from driftloop.errors import SchemaError, StackError
from driftloop.ops.broker import S3RVER_BUCKET, EmbeddedBroker, S3rver, s3rver_client_env
from driftloop.ops.procs import pid_alive, port_open, spawn, stop_pid, wait_until
from driftloop.runtime import ownedprocs
from driftloop.runtime.bus import EventBus, ensure_event_topics, ensure_topics

# The dashboard last: it only reads the others (event log, HTTP APIs).
SERVICES = ("ingestion", "features", "training", "registry", "serving", "monitor", "triggers", "dashboard")

# The Prometheus config docker-compose.yml uses: the one place that names the scrape jobs, paths and labels.
PROMETHEUS_TEMPLATE = Path(__file__).resolve().parents[3] / "infra" / "prometheus" / "prometheus.yml"


def _reachable_host(host: str) -> str:
    """Where a local client reaches a server bound to ``host`` (a wildcard bind is reached on loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def prometheus_config(
    settings: Settings,
    services: Sequence[str] = SERVICES,
    *,
    template: Path = PROMETHEUS_TEMPLATE,
    scrape_interval: str | None = None,
) -> dict[str, Any]:
    """The project's Prometheus config (``template``: its jobs, metrics paths and labels) with every driftloop
    service target (``<service>:<port>``) rewritten to where ``settings`` runs it. Services not in ``services``
    are left out, so that every remaining target is expected up. Other targets are kept as they are."""
    unknown = sorted(set(services) - set(SERVICES))
    if unknown:
        raise StackError(f"unknown services {unknown}: known are {list(SERVICES)}")
    config: dict[str, Any] = yaml.safe_load(template.read_text())
    host = _reachable_host(settings.services.host)
    jobs = []
    for job in config.get("scrape_configs") or []:
        groups = []
        for group in job.get("static_configs") or []:
            targets = []
            for target in group.get("targets") or []:
                name = str(target).rpartition(":")[0]
                if name not in SERVICES:
                    targets.append(target)
                elif name in services:
                    targets.append(f"{host}:{settings.services.port(name)}")
            if targets:
                groups.append({**group, "targets": targets})
        if groups or not job.get("static_configs"):
            jobs.append({**job, "static_configs": groups} if job.get("static_configs") else job)
    config["scrape_configs"] = jobs
    if scrape_interval:
        config.setdefault("global", {}).update(scrape_interval=scrape_interval, evaluation_interval=scrape_interval)
    return config


def write_prometheus_config(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# Made by driftloop from {PROMETHEUS_TEMPLATE.name} (infra/prometheus): edit that file, not this one.\n"
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class Component:
    name: str
    pid: int
    url: str
    log: str
    health_url: str | None
    # Kept by the supervisor: how often it restarted this component, and whether it gave up (crash loop).
    restarts: int = 0
    crashing: bool = False
    last_exit: float | None = None  # epoch seconds of the last exit the supervisor saw

    def health(self) -> dict[str, Any]:
        alive = pid_alive(self.pid)
        info: dict[str, Any] = {**asdict(self), "alive": alive, "healthy": False, "ready": False}
        if not alive:
            return info
        if not self.url:  # a process without a port (s3rver has one; nothing else today)
            info["healthy"] = info["ready"] = True
            return info
        if self.health_url is None:
            host, _, port = self.url.removeprefix("kafka://").rpartition(":")
            info["healthy"] = info["ready"] = port_open(host, int(port))
            return info
        info["healthy"], info["ready"] = probe_health(self.health_url)
        return info


def register_stream_schemas(bus: EventBus, pipelines: Iterable[PipelineConfig]) -> list[str]:
    """Register each stream's value schema under its subject, so that producers can write with the latest
    registered version (``use.latest.version``) and register nothing. Returns the problems (a subject whose
    registered versions the pipeline's schema is not compatible with): the stack still starts, and the producer
    contract of that stream is what the registry holds until the pipeline or the subject is fixed."""
    problems = []
    for cfg in pipelines:
        try:
            bus.codec.register(cfg.stream.subject, cfg.stream.avro_schema())
        except SchemaError as exc:
            problems.append(f"stream {cfg.stream.name}: {exc}")
    return problems


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

    def _state(self) -> dict[str, Any]:
        if not self.state_file.is_file():
            return {}
        return dict(json.loads(self.state_file.read_text()))

    def components(self) -> list[Component]:
        return [Component(**c) for c in self._state().get("components", [])]

    def supervisor_pid(self) -> int | None:
        pid = self._state().get("supervisor_pid")
        return int(pid) if pid else None

    def _save(self, components: list[Component], **extra: Any) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        previous = self._state()
        data = {
            "started_at": previous.get("started_at", time.time()),
            "supervisor_pid": previous.get("supervisor_pid"),
            **extra,
            "components": [asdict(c) for c in components],
        }
        tmp = self.state_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.state_file)

    def save_components(self, components: list[Component]) -> None:
        self._save(components)

    def status(self) -> list[dict[str, Any]]:
        return [c.health() for c in self.components()]

    def supervisor_status(self) -> dict[str, Any]:
        pid = self.supervisor_pid()
        return {"pid": pid, "alive": bool(pid and pid_alive(pid)), "log": str(self.settings.log_dir / "supervisor.log")}

    # --- up / down ---------------------------------------------------------------------------------------

    def up(
        self,
        timeout: float = 240.0,
        *,
        services: Sequence[str] = SERVICES,
        prometheus: bool | None = None,
        prometheus_port: int | None = None,
        scrape_interval: str | None = None,
    ) -> list[Component]:
        """Start the stack: ``services`` (default all), and with ``prometheus`` (default: the ``prometheus.enabled``
        setting) a Prometheus server on ``prometheus_port`` (default: ``prometheus.port``) scraping them
        (``scrape_interval``: default the template's)."""
        if prometheus is None:
            prometheus = self.settings.prometheus.enabled
        if prometheus_port is None:
            prometheus_port = self.settings.prometheus.port
        running = [c for c in self.components() if pid_alive(c.pid)]
        if running or (self.supervisor_pid() and pid_alive(self.supervisor_pid() or 0)):
            raise StackError(
                f"a stack is already running from {self.state_file} ({', '.join(c.name for c in running)}): "
                "run `driftloop down` first"
            )
        load_pipelines(self.settings.pipelines_dir)  # fail early on a bad pipeline file
        # Fail before starting anything: Prometheus' config needs known services, and the binary must be there.
        scrape_config = prometheus_config(self.settings, services, scrape_interval=scrape_interval)
        prometheus_binary = self._prometheus_binary(prometheus_port) if prometheus else None
        log_dir = self.settings.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        components: list[Component] = []
        if ensure_admin_token(self.settings) and not self.settings.security.admin_tokens:
            self.say(f"security: admin token in {token_file(self.settings)} (mode 600; the CLI reads it)")
        try:
            self.say(f"database: migrating {self._safe_db_url()}")
            migrate(self.settings.database_url)
            if self.settings.kafka.embedded:
                if self.settings.kafka.embedded_storage == "s3rver":
                    components.append(self._start_s3rver())
                    self._save(components)
                components.append(self._start_broker())
                self._save(components)
            if self.settings.schema_registry.embedded:
                components.append(self._start_service("schemaregistry"))
                self._save(components)
                self._wait_ready(components[-1], timeout)
            self._prepare_bus()
            for name in services:
                components.append(self._start_service(name))
                self._save(components)
            for component in components:
                self._wait_ready(component, timeout)
            if prometheus_binary:
                components.append(self._start_prometheus(prometheus_binary, prometheus_port, scrape_config))
                self._save(components)
                self._wait_ready(components[-1], timeout)
            if self.settings.supervisor.enabled:
                self._start_supervisor()
        except BaseException:
            self.say("start failed: stopping what was started")
            self._stop_supervisor()
            self._stop_all(components)
            raise
        return components

    # --- components, (re)started one by one (also by the supervisor) -------------------------------------

    def _prepare_bus(self) -> None:
        """Topics (with their configs) and event schemas: at start, and after an embedded broker restarted empty."""
        self.say("topics: creating event and stream topics")
        ensure_event_topics(self.settings)
        self.say("schemas: registering the event schemas")
        bus = EventBus(self.settings, producer_name="driftloop-cli")
        try:
            bus.register_event_schemas()
            pipelines = load_pipelines(self.settings.pipelines_dir)
            ensure_topics(self.settings, [cfg.stream.topic for cfg in pipelines.values()])
            self.say("schemas: registering each stream's value schema (the producer contract)")
            for problem in register_stream_schemas(bus, pipelines.values()):
                self.say(f"[yellow]warning:[/yellow] {problem}")
        finally:
            bus.close()

    def _broker(self) -> EmbeddedBroker:
        kafka = self.settings.kafka
        host, _, port = kafka.bootstrap_servers.rpartition(":")
        log_path = self.settings.log_dir / "broker.log"
        if kafka.embedded_storage == "s3rver":
            return EmbeddedBroker(
                port=int(port),
                host=host or "127.0.0.1",
                log_path=log_path,
                storage=f"s3://{S3RVER_BUCKET}/",
                env=s3rver_client_env(kafka.s3rver_port),
            )
        return EmbeddedBroker(port=int(port), host=host or "127.0.0.1", log_path=log_path)

    def _start_broker(self) -> Component:
        broker = self._broker()
        pid = broker.start()
        storage = "durable, s3rver" if self.settings.kafka.embedded_storage == "s3rver" else "in memory"
        self.say(f"broker (Tansu, {storage}) on {broker.bootstrap_servers}, pid {pid}")
        return Component("broker", pid, f"kafka://{broker.bootstrap_servers}", str(broker.log_path), None)

    def _start_s3rver(self) -> Component:
        kafka = self.settings.kafka
        log_path = self.settings.log_dir / "s3rver.log"
        server = S3rver(self.home / "broker", kafka.s3rver_port, log_path, kafka.s3rver_command)
        pid = server.start()
        self.say(f"s3rver (the broker's durable storage) on {server.endpoint}, data in {server.data_dir}, pid {pid}")
        return Component("s3rver", pid, f"kafka://127.0.0.1:{kafka.s3rver_port}", str(server.log_path), None)

    def start_component(self, name: str) -> Component:
        """Start one component again (the supervisor's restart): a service, the broker (topics and schemas made
        again if it came back empty), its s3rver, or Prometheus."""
        if name == "broker":
            component = self._start_broker()
            if self.settings.kafka.embedded_storage == "memory":
                try:
                    self._prepare_bus()
                except Exception as exc:  # the broker runs: services make their topics again as they need them
                    self.say(f"broker restarted, but its topics and schemas could not be made again now: {exc}")
            return component
        if name == "s3rver":
            return self._start_s3rver()
        if name == "prometheus":
            port = int(next(c for c in self.components() if c.name == "prometheus").url.rpartition(":")[2])
            services = [c.name for c in self.components() if c.name in SERVICES]
            return self._start_prometheus(
                self._prometheus_binary(port), port, prometheus_config(self.settings, services)
            )
        return self._start_service(name)

    def _start_supervisor(self) -> None:
        log = self.settings.log_dir / "supervisor.log"
        proc = spawn([sys.executable, "-m", "driftloop.ops.supervisor"], log, env=child_environment(self.settings))
        self._save(self.components(), supervisor_pid=proc.pid)
        self.say(f"supervisor: restarts components that exit, pid {proc.pid} (log {log})")

    def _stop_supervisor(self) -> None:
        pid = self.supervisor_pid()
        if pid is not None and stop_pid(pid, timeout=20.0):
            self.say(f"supervisor: stopped (pid {pid})")

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

    def _prometheus_binary(self, port: int) -> str:
        binary = shutil.which("prometheus")
        if binary is None:
            raise StackError(
                "--prometheus needs the `prometheus` binary on the PATH: `make setup` (infra/setup-system.sh) "
                "installs Debian's prometheus package"
            )
        host = _reachable_host(self.settings.services.host).strip("[]")
        if port_open(host, port):
            raise StackError(f"port {port} for prometheus is in use: choose another with --prometheus-port")
        return binary

    def _start_prometheus(self, binary: str, port: int, config: dict[str, Any]) -> Component:
        """Prometheus with its config and data under ``<home>/prometheus``, listening where the services do (a
        wildcard services bind gives loopback: Prometheus has no authentication)."""
        folder = self.home / "prometheus"
        config_path = write_prometheus_config(folder / "prometheus.yml", config)
        host = _reachable_host(self.settings.services.host)
        log = self.settings.log_dir / "prometheus.log"
        proc = spawn(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address={host}:{port}",
            ],
            log,
        )
        url = f"http://{host}:{port}"
        self.say(f"prometheus: starting on {url} (config {config_path}), pid {proc.pid}")
        return Component("prometheus", proc.pid, url, str(log), f"{url}/-/ready")

    def _wait_ready(self, component: Component, timeout: float) -> None:
        if component.health_url is None:
            return

        def ready() -> bool:
            if not pid_alive(component.pid):
                # Services also write a .out (stdout/stderr); Prometheus has only its log.
                logs = [
                    log for log in (component.log, str(Path(component.log).with_suffix(".out"))) if Path(log).exists()
                ]
                raise StackError(f"{component.name} exited during start: see {' and '.join(logs) or component.log}")
            return http_ready(component.health_url or "")

        wait_until(ready, timeout, f"{component.name} to be ready (see {component.log})")
        self.say(f"{component.name}: ready")

    def down(self) -> list[str]:
        # The supervisor first, so that nothing is restarted while the rest stops.
        self._stop_supervisor()
        components = self.components()
        stopped = self._stop_all(components)
        # Processes a service started that outlive it when it was killed (training's Ray daemons), by their PIDs.
        for owner, pids in ownedprocs.stop_all_recorded(self.home).items():
            self.say(f"{owner}: stopped {len(pids)} leftover process(es) {pids}")
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
