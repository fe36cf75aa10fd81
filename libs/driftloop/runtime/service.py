"""What every service process shares: logging to a file, settings, pipelines, the bus, an HTTP app with
``/healthz`` and ``/metrics``, consumer threads, and a clean stop on SIGTERM.

A service module defines a ``build(runtime) -> ServiceSpec`` function; ``run(name, build)`` does the rest.
One-off maintenance jobs of a service (``python -m driftloop.services.NAME TASK``, e.g. ``purge``) are passed as
``run(name, build, tasks={...})``: the CLI runs them as processes, so it never imports a service's code.
"""

from __future__ import annotations

import functools
import json
import logging
import logging.handlers
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import sessionmaker

from driftloop.clients.db import create_engine_for, migrate, session_factory
from driftloop.contracts.pipeline import PipelineConfig, load_pipelines
from driftloop.contracts.settings import Settings, load_settings
from driftloop.contracts.topics import Topic
from driftloop.errors import AuthenticationRequired, DriftloopError, http_status_of
from driftloop.runtime import workers
from driftloop.runtime.bus import EventBus, EventHandler
from driftloop.runtime.metrics import SERVICE_INFO, HttpMetricsMiddleware
from driftloop.runtime.security import TokenChecker, bearer_scheme

log = logging.getLogger(__name__)


def configure_logging(settings: Settings, service: str) -> str:
    """Log to ``<home>/logs/<service>.log`` (and stderr). Returns the log file path."""
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    path = settings.log_dir / f"{service}.log"
    fmt = logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s")
    file_handler = logging.handlers.RotatingFileHandler(path, maxBytes=20_000_000, backupCount=3)
    file_handler.setFormatter(fmt)
    stream_handler = logging.StreamHandler(sys.stderr)
    stream_handler.setFormatter(fmt)
    root = logging.getLogger()
    root.handlers[:] = [file_handler, stream_handler]
    root.setLevel(settings.log_level)
    for noisy in ("py4j", "urllib3", "httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return str(path)


@dataclass
class Runtime:
    """What a service gets to build itself with."""

    name: str
    settings: Settings
    pipelines: dict[str, PipelineConfig]
    bus: EventBus

    @property
    def engine(self) -> sa.Engine:
        return self.bus.engine

    @property
    def Session(self) -> sessionmaker[OrmSession]:
        return session_factory(self.bus.engine)


@dataclass
class ConsumerSpec:
    group: str
    handlers: dict[Topic, EventHandler]


@dataclass
class ServiceSpec:
    app: FastAPI
    consumers: list[ConsumerSpec] = field(default_factory=list)
    # Background loops other than consumers (e.g. a landing timer). Each gets the stop event.
    loops: list[Callable[[threading.Event], None]] = field(default_factory=list)
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    # Extra readiness checks shown on /healthz; all must be true for "ready".
    ready_checks: dict[str, Callable[[], bool]] = field(default_factory=dict)
    # Extra facts shown on /healthz that do not decide readiness (e.g. serving's models_loaded).
    health_info: dict[str, Callable[[], Any]] = field(default_factory=dict)
    # HTTP processes behind the service's port (``driftloop.runtime.workers``); consumers and loops run in one.
    workers: int = 1


async def api_context(request: Request) -> Any:
    """What a service's routes need (its ``api.Context``: model table, repository, settings, ...), which its
    ``build`` puts on ``app.state.context``. Routes take it as a dependency, so a service's routes are a plain
    module-level ``APIRouter`` and a test serves them with a context of its own. (Async: read on the event loop,
    without a trip through the thread pool.)"""
    return request.app.state.context


async def error_response(_request: Request, exc: Exception) -> JSONResponse:
    """The one answer to any error of the tree (``driftloop.errors``): its status, ``{"detail", "code"}``."""
    assert isinstance(exc, DriftloopError)
    # RFC 9110: a 401 names the scheme that would be accepted.
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthenticationRequired) else None
    return JSONResponse(
        status_code=http_status_of(exc), content={"detail": exc.detail, "code": exc.code}, headers=headers
    )


def base_app(runtime: Runtime, title: str, description: str = "") -> FastAPI:
    """A FastAPI app with the endpoints every service has, any error of the tree answered with its status and code
    (``error_response``), and the token check (``driftloop.runtime.security``) on every route, including the ones
    a service adds later."""
    # A stand-in runtime without settings (unit tests) gets an open API.
    checker = TokenChecker(getattr(runtime, "settings", None))
    if not checker.enforced:
        log.warning("%s: no admin token configured: the HTTP API is open (see security settings)", title)

    # Async: a few microseconds of work, done on the event loop rather than after a hop to the thread pool.
    async def check_token(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)
    ) -> None:
        request.state.principal = checker(request, credentials)

    app = FastAPI(
        title=f"driftloop {title}",
        description=description,
        version="0.1.0",
        dependencies=[Depends(check_token)],
    )
    app.state.runtime = runtime
    app.state.token_checker = checker
    # Request count and latency per route on every service's /metrics (besides the bus's consumer metrics).
    app.add_middleware(HttpMetricsMiddleware)
    SERVICE_INFO.labels(runtime.name).set(1)

    app.add_exception_handler(DriftloopError, error_response)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)

    return app


def _consumers_ready(runtime: Runtime, spec: ServiceSpec) -> bool:
    # Every consumer thread has registered (a loop such as the monitor's faust engine may add one of its own).
    consumers = runtime.bus.consumers
    return all(c.assigned for c in consumers) and len(consumers) >= len(spec.consumers)


def _add_health(
    app: FastAPI, runtime: Runtime, spec: ServiceSpec, consumers_ready: Callable[[], bool] | None = None
) -> None:
    """``/healthz``; in an HTTP worker, ``consumers_ready`` reads the first process's consumers' state."""
    consumers_ready = consumers_ready or (lambda: _consumers_ready(runtime, spec))

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        consumers = [
            {
                "group": c.group,
                "topics": c.topics,
                "assigned": c.assigned,
                "handled": c.handled,
                "failed": c.failed,
                "last_error": c.last_error,
            }
            for c in runtime.bus.consumers
        ]
        checks = {name: bool(check()) for name, check in spec.ready_checks.items()}
        ready = consumers_ready() and all(checks.values())
        info = {name: get() for name, get in spec.health_info.items()}
        return {
            "service": runtime.name,
            "pid": os.getpid(),  # which of the service's HTTP processes answered (``workers``)
            "status": "ok",
            "ready": ready,
            "consumers": consumers,
            "checks": checks,
            **info,
        }


def make_runtime(name: str, settings: Settings | None = None, *, migrated: bool = False) -> Runtime:
    settings = settings or load_settings()
    pipelines = load_pipelines(settings.pipelines_dir)
    if not migrated:
        migrate(settings.database_url)
    engine = create_engine_for(settings.database_url)
    bus = EventBus(settings, producer_name=name, engine=engine)
    return Runtime(name=name, settings=settings, pipelines=pipelines, bus=bus)


def _run_http_worker(
    name: str, build: Callable[[Runtime], ServiceSpec], sock_fd: int, ready: workers.SharedFlag, index: int
) -> None:
    """An HTTP worker (``driftloop.runtime.workers``): the service's app on the inherited socket, no consumers."""
    settings = load_settings()
    configure_logging(settings, f"{name}-worker{index}")
    runtime = make_runtime(name, settings, migrated=True)
    spec = build(runtime)
    _add_health(spec.app, runtime, spec, consumers_ready=ready.get)
    config = uvicorn.Config(
        spec.app, fd=sock_fd, log_level=settings.log_level.lower(), access_log=False, log_config=None
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    finally:
        for hook in spec.on_stop:
            try:
                hook()
            except Exception:
                log.exception("%s worker %d: stop hook failed", name, index)
        runtime.bus.close()


ServiceTask = Callable[[Settings], Mapping[str, Any]]


def run_task(name: str, tasks: Mapping[str, ServiceTask], argv: list[str]) -> None:
    """Run one maintenance task of service ``name`` with the platform's settings; print its result as JSON."""
    task = tasks.get(argv[0]) if len(argv) == 1 else None
    if task is None:
        known = ", ".join(sorted(tasks)) or "none"
        print(f"driftloop {name}: unknown task {' '.join(argv)!r} (tasks: {known}; no argument runs the service)",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    try:
        result = task(load_settings())
    except DriftloopError as exc:
        print(f"driftloop {name} {argv[0]}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.stdout.write(json.dumps(result, default=str) + "\n")


def run(name: str, build: Callable[[Runtime], ServiceSpec], tasks: Mapping[str, ServiceTask] | None = None) -> None:
    """Run a service process until SIGTERM/SIGINT: HTTP app in the main thread, consumers in threads. With an
    argument, run that one task of ``tasks`` instead and exit."""
    if len(sys.argv) > 1:
        run_task(name, tasks or {}, sys.argv[1:])
        return
    role = workers.worker_role()
    if role is not None:
        _run_http_worker(name, build, *role)
        return
    try:
        settings = load_settings()
        log_path = configure_logging(settings, name)
        runtime = make_runtime(name, settings)
        spec = build(runtime)
    except DriftloopError as exc:
        print(f"driftloop {name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("%s starting; log file %s", name, log_path)
    if name != "schemaregistry":
        runtime.bus.register_event_schemas()
    _add_health(spec.app, runtime, spec)

    threads = []
    for consumer in spec.consumers:
        t = threading.Thread(
            target=runtime.bus.run_consumer, args=(consumer.group, consumer.handlers), name=consumer.group, daemon=True
        )
        threads.append(t)
    for loop in spec.loops:
        threads.append(threading.Thread(target=loop, args=(runtime.bus.stop_event,), name=loop.__name__, daemon=True))
    for t in threads:
        t.start()

    config = uvicorn.Config(
        spec.app,
        host=settings.services.host,
        port=settings.services.port(name),
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,
    )
    server = uvicorn.Server(config)
    sockets, http_workers = None, []
    if spec.workers > 1:
        sock = config.bind_socket()
        sockets, flag = [sock], workers.SharedFlag()
        http_workers = workers.spawn_workers(name, sock, flag, spec.workers - 1)
        ready = functools.partial(_consumers_ready, runtime, spec)
        supervisor = threading.Thread(
            target=workers.supervise,
            args=(name, sock, flag, http_workers, ready, runtime.bus.stop_event),
            name="http-workers",
            daemon=True,
        )
        threads.append(supervisor)
        supervisor.start()
        log.info("%s: %d HTTP worker processes besides this one, pids %s", name, len(http_workers),
                 [p.pid for p in http_workers])  # fmt: skip

    def _stop(signum: int, _frame: Any) -> None:
        log.info("%s: signal %d, stopping", name, signum)
        runtime.bus.stop_event.set()
        server.should_exit = True

    # uvicorn swaps in its own handlers while serving and re-raises the signal afterwards: ours must be the
    # ones it restores, so that the re-raised SIGTERM reaches the clean stop below instead of killing us.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        server.run(sockets=sockets)
    finally:
        runtime.bus.stop_event.set()
        workers.stop_workers(http_workers)
        for t in threads:
            t.join(timeout=10)
        for hook in spec.on_stop:
            try:
                hook()
            except Exception:
                log.exception("%s: stop hook failed", name)
        runtime.bus.close()
        log.info("%s stopped", name)
