"""What every service process shares: logging to a file, settings, pipelines (a ``PipelineCatalog`` kept current
by ``driftloop pipeline apply``), the bus, an HTTP app with ``/healthz`` and ``/metrics``, consumer threads, and a
clean stop on SIGTERM.

A service module defines a ``build(runtime) -> ServiceSpec`` function; ``run(name, build)`` does the rest.
One-off maintenance jobs of a service (``python -m driftloop.services.NAME TASK``, e.g. ``purge``) are passed as
``run(name, build, tasks={...})``: the CLI runs them as processes, so it never imports a service's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import logging.handlers
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

import h11
import sqlalchemy as sa
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from driftloop.clients.db import create_engine_for, migrate, session_factory
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.contracts.settings import ServicesSettings, Settings, load_settings
from driftloop.contracts.topics import Topic
from driftloop.errors import (
    AuthenticationRequired,
    DriftloopError,
    InvalidRequest,
    PayloadTooLarge,
    ServiceError,
    http_status_of,
)
from driftloop.runtime import workers
from driftloop.runtime.bus import EventBus, EventHandler
from driftloop.runtime.metrics import SERVICE_INFO, HttpMetricsMiddleware
from driftloop.runtime.pipelines import PipelineCatalog, follow
from driftloop.runtime.security import TokenChecker, bearer_scheme, bearer_token

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
    # Look pipelines up here each time (never keep a copy): ``driftloop pipeline apply`` changes them live.
    pipelines: PipelineCatalog
    bus: EventBus

    def __post_init__(self) -> None:
        if not isinstance(self.pipelines, PipelineCatalog):  # a plain mapping (tests): a catalog of it
            self.pipelines = PipelineCatalog(cast(Mapping[str, PipelineConfig], self.pipelines))

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
    # A group of this one process reading its topics whole: no group membership (``EventBus.run_consumer``).
    broadcast: bool = False
    # Its events start the next step of a cascade: the broker answers its fetches sooner (kafka.prompt_fetch_wait_ms).
    prompt: bool = False


@dataclass
class ServiceSpec:
    app: FastAPI
    consumers: list[ConsumerSpec] = field(default_factory=list)
    # Background loops other than consumers (e.g. a landing timer). Each gets the stop event.
    loops: list[Callable[[threading.Event], None]] = field(default_factory=list)
    on_stop: list[Callable[[], object]] = field(default_factory=list)  # what a hook returns is ignored
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


class ErrorBody(BaseModel):
    """The body of every error answer (``driftloop.errors``): a message, or for a request that does not fit the
    route's declared types, the list of what is wrong (``RequestValidationError``); and a stable code."""

    detail: Any = Field(description="What went wrong and how to fix it (a message, or a structured detail).")
    code: str = Field(description="A stable machine-readable code (driftloop.errors).")


# What any route may answer besides its own results: declared on every route's OpenAPI.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "Bad request: the request cannot be done as asked.",
        401: "No token, or an unknown one (a protected route).",
        403: "The token's scope does not allow this call.",
        404: "The stream, model, version or other resource named does not exist.",
        409: "Conflicts with the current state.",
        413: "The request body is over the route's size limit.",
        414: "The request target (path and query) is over the size limit.",
        422: "The request's parameters or body do not fit the route (which and why in `detail`).",
        503: "A dependency (database, online store, broker, model) is not available now.",
    }.items()
}
# A route accepting a body larger than ``services.max_body_bytes`` declares its own cap:
# ``@router.post(..., openapi_extra=body_limit(32 * 1024 * 1024))``.
MAX_BODY_MARK = "x-driftloop-max-body-bytes"


def body_limit(max_bytes: int) -> dict[str, Any]:
    return {MAX_BODY_MARK: max_bytes}


async def error_response(_request: Request, exc: Exception) -> JSONResponse:
    """The one answer to any error of the tree (``driftloop.errors``): its status, ``{"detail", "code"}``."""
    assert isinstance(exc, DriftloopError)
    return _error_json(exc)


def _error_json(exc: DriftloopError) -> JSONResponse:
    # RFC 9110: a 401 names the scheme that would be accepted.
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthenticationRequired) else None
    return JSONResponse(
        status_code=http_status_of(exc), content={"detail": exc.detail, "code": exc.code}, headers=headers
    )


def _printable(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


async def validation_error_response(_request: Request, exc: Exception) -> JSONResponse:
    """A request that does not fit the route's declared types: 422 with the list of problems (FastAPI's own
    ``detail``) and the code of ``InvalidRequest``, the same shape as every other error."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(
        status_code=InvalidRequest.status_code,
        # A body that is not UTF-8 is echoed back as ``input``: bytes are shown with replacement characters.
        content={
            "detail": jsonable_encoder(exc.errors(), custom_encoder={bytes: _printable}),
            "code": InvalidRequest.default_code,
        },
    )


def api_routes(app: FastAPI) -> list[Any]:
    """Every route of the app, each with its ``path``, ``methods``, ``openapi_extra`` and ``matches``: FastAPI keeps
    the routes of an included router behind one entry of ``app.routes`` (resolved by ``effective_candidates``)."""
    found: list[Any] = []
    pending = list(app.router.routes)
    while pending:
        route = pending.pop(0)
        candidates = getattr(route, "effective_candidates", None)
        if candidates is None:
            found.append(route)
        else:
            pending[:0] = list(candidates())
    return found


async def http_error_response(_request: Request, exc: Exception) -> Response:
    """What the framework itself answers (no such path 404, method 405, a body that is not UTF-8 400): the same
    ``{"detail", "code"}`` as every other error."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code < 400:  # not an error (e.g. 304)
        return Response(status_code=exc.status_code, headers=exc.headers)
    code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail, "code": code}, headers=exc.headers)


class RequestGuard:
    """Pure ASGI middleware in front of every route: who is calling (``TokenChecker.authorize``, from the headers
    alone), then the body's size, refused (413) by its declared length or as it streams in (chunked bodies too),
    before any route reads a byte of it. A route is let through with the body read whole, up to its cap
    (``services.max_body_bytes``, or the route's ``body_limit``)."""

    def __init__(
        self, app: Any, *, routes_of: FastAPI, checker: TokenChecker, max_body_bytes: int, max_target_bytes: int
    ) -> None:
        self.app = app
        self.routes_of = routes_of
        self.checker = checker
        self.max_body_bytes = max_body_bytes
        self.max_target_bytes = max_target_bytes

    def _route(self, scope: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        partial = None
        for route in api_routes(self.routes_of):
            match, child = route.matches(scope)
            if match == Match.FULL:
                return route, child.get("path_params", {})
            if match == Match.PARTIAL and partial is None:
                partial = (route, child.get("path_params", {}))
        return partial or (None, {})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        target = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b""))
        if target > self.max_target_bytes:
            message = f"the request target has {target} bytes; the limit is {self.max_target_bytes}"
            await _error_json(ServiceError(message, status_code=414, code="uri_too_long"))(scope, receive, send)
            return
        route, params = self._route(scope)
        extra = getattr(route, "openapi_extra", None) or {}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            principal = self.checker.authorize(
                scope["method"],
                scope["path"],
                getattr(route, "path", None),
                params,
                bearer_token(headers.get("authorization")),
                extra,
            )
            limit = int(extra.get(MAX_BODY_MARK, self.max_body_bytes))
            body = await self._read_body(receive, headers.get("content-length"), limit)
        except DriftloopError as exc:
            await _error_json(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        delivered = False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as a server would

        await self.app(scope, replay, send)

    @staticmethod
    async def _read_body(receive: Any, declared: str | None, limit: int) -> bytes:
        def too_large(size: str | int) -> PayloadTooLarge:
            return PayloadTooLarge(f"request body of {size} bytes is over this route's limit of {limit} bytes")

        declared = (declared or "").strip()
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise too_large(declared)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(f"over {limit}")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def base_app(runtime: Runtime, title: str, description: str = "") -> FastAPI:
    """A FastAPI app with the endpoints every service has, any error of the tree answered with its status and code
    (``error_response``), and ``RequestGuard`` in front of every route, including the ones a service adds later:
    the token check (``driftloop.runtime.security``) and the body-size cap, both before a body is read."""
    # A stand-in runtime without settings (unit tests) gets an open API.
    settings = getattr(runtime, "settings", None)
    checker = TokenChecker(settings, getattr(runtime, "pipelines", None))
    if not checker.enforced:
        log.warning("%s: no admin token configured: the HTTP API is open (see security settings)", title)

    async def bearer_documented(_credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)) -> None:
        """Declares the bearer scheme in the OpenAPI; the check itself is ``RequestGuard``'s."""

    app = FastAPI(
        title=f"driftloop {title}",
        description=description,
        version="0.1.0",
        dependencies=[Depends(bearer_documented)],
        responses=ERROR_RESPONSES,
    )
    app.state.runtime = runtime
    app.state.token_checker = checker
    services = settings.services if settings is not None else ServicesSettings()
    app.add_middleware(
        RequestGuard,
        routes_of=app,
        checker=checker,
        max_body_bytes=services.max_body_bytes,
        max_target_bytes=services.max_header_bytes,
    )
    # Request count and latency per route on every service's /metrics (besides the bus's consumer metrics); the
    # outermost middleware, so refused requests are counted too.
    app.add_middleware(HttpMetricsMiddleware)
    SERVICE_INFO.labels(runtime.name).set(1)

    app.add_exception_handler(DriftloopError, error_response)
    app.add_exception_handler(RequestValidationError, validation_error_response)
    app.add_exception_handler(StarletteHTTPException, http_error_response)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)

    return app


class _HeaderTimeout:
    """A header-read timeout for uvicorn's protocols: a connection must send a whole request head within the
    keep-alive timeout of its opening (or of the end of its previous answer), else it is closed. uvicorn arms that
    timer only between requests and drops it at the first byte received, so a client that connects and sends
    nothing, or a head a byte at a time, would otherwise hold its connection for ever."""

    def _waiting_for_head(self: Any) -> bool:
        raise NotImplementedError

    def connection_made(self: Any, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._head_deadline = self.loop.time() + self.timeout_keep_alive
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def on_response_complete(self: Any) -> None:
        self._head_deadline = self.loop.time() + self.timeout_keep_alive  # uvicorn arms its timer here itself
        super().on_response_complete()  # type: ignore[misc]

    def data_received(self: Any, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]  # drops the timer
        if self._waiting_for_head() and not self.transport.is_closing() and self.timeout_keep_alive_task is None:
            remaining = max(0.0, self._head_deadline - self.loop.time())
            self.timeout_keep_alive_task = self.loop.call_later(remaining, self.timeout_keep_alive_handler)


class HeaderTimeoutH11Protocol(_HeaderTimeout, H11Protocol):
    """The pure-Python parser (h11) with the header-read timeout."""

    def _waiting_for_head(self) -> bool:
        return self.conn.their_state is h11.IDLE


class HeaderTimeoutHttpToolsProtocol(_HeaderTimeout, HttpToolsProtocol):
    """The C parser (httptools, the default: several times cheaper per request) with the header-read timeout."""

    def _waiting_for_head(self) -> bool:
        # A request's cycle exists from its complete head on; none, or a finished one: waiting for the next head.
        return self.cycle is None or self.cycle.response_complete


# How often a service's HTTP server wakes at rest (uvicorn: ten times a second): it refreshes the Date header then.
SERVER_TICK_SECONDS = 1.0


class Server(uvicorn.Server):
    """uvicorn's server, whose main loop wakes once a second instead of ten times (its only work at rest, about
    0.1% of a core per process): the Date header is still refreshed each second, and a stop (``should_exit``, set
    by a signal handler or another thread) wakes the loop at once."""

    _exit_wake: tuple[asyncio.Event, asyncio.AbstractEventLoop] | None = None

    @property
    def should_exit(self) -> bool:
        return bool(self.__dict__.get("_should_exit", False))

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self.__dict__["_should_exit"] = value
        wake = self._exit_wake
        if value and wake is not None:
            event, loop = wake
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to wake
                loop.call_soon_threadsafe(event.set)

    async def main_loop(self) -> None:
        self._exit_wake = (asyncio.Event(), asyncio.get_running_loop())
        tick = 0
        # on_tick refreshes the Date header when its counter is a multiple of 10 (one tick of uvicorn's 0.1 s in
        # ten): here every tick is one.
        while not await self.on_tick(tick):
            tick = (tick + 10) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit_wake[0].wait(), SERVER_TICK_SECONDS)


def server_config(app: FastAPI, settings: Settings, name: str, *, fd: int | None = None) -> uvicorn.Config:
    """How a service's HTTP server runs: its port, and the limits of ``services`` settings (header-read and
    keep-alive timeout, size of a request head, connections and requests in flight: over that, 503)."""
    services = settings.services
    return uvicorn.Config(
        app,
        host=services.host,
        port=services.port(name),
        fd=fd,  # an HTTP worker serves on the socket its first process bound
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,
        http=HeaderTimeoutH11Protocol if services.http_parser == "h11" else HeaderTimeoutHttpToolsProtocol,
        timeout_keep_alive=int(max(1, round(services.header_timeout_seconds))),
        limit_concurrency=services.max_concurrency,
        h11_max_incomplete_event_size=services.max_header_bytes,
    )


def _consumers_ready(runtime: Runtime, spec: ServiceSpec) -> bool:
    # Every consumer thread has registered (a loop such as the monitor's faust engine may add one of its own). A
    # consumer resting with its quiet process is ready: the doorbell wakes it (``kafka.rest_after_seconds``).
    consumers = runtime.bus.consumers
    ready = all(c.assigned or c.extra.get("resting", False) for c in consumers)
    return ready and len(consumers) >= len(spec.consumers)


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
                "restarts": c.restarts,
                "last_error": c.last_error,
                # Its partitions paused while the process is quiet (``kafka.rest_after_seconds``).
                "resting": bool(c.extra.get("resting", False)),
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
            "pipelines": runtime.pipelines.describe(),
            "checks": checks,
            **info,
        }


def make_runtime(name: str, settings: Settings | None = None, *, migrated: bool = False) -> Runtime:
    settings = settings or load_settings()
    pipelines = PipelineCatalog.load(settings.pipelines_dir)
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
    if name != "schemaregistry":  # its routes read the pipelines too: it follows their changes like the first one
        follower = follow(runtime.pipelines, runtime.bus, name)
        threading.Thread(target=follower, args=(runtime.bus.stop_event,), name="follow_pipelines", daemon=True).start()
    server = Server(server_config(spec.app, settings, name, fd=sock_fd))
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


# A worker process started by ``supervise_workers`` finds the listening socket it inherited under this number.
LISTEN_FD_ENV = "_DRIFTLOOP_LISTEN_FD"  # not a setting: outside the DRIFTLOOP_ namespace
WORKER_STOP_SECONDS = 30.0


def no_delay(listener: socket.socket) -> socket.socket:
    """TCP_NODELAY on a listening socket, so every connection it accepts has it (Linux copies it to them).
    asyncio sets it on the connections it accepts only when it knows the socket is TCP, and uvicorn given a socket
    by file descriptor takes it for a Unix socket: without this, a response written in two parts (uvicorn writes
    its head, then its body) waited for the client's delayed ACK, 40 ms, on every such connection."""
    if listener.family in (socket.AF_INET, socket.AF_INET6):
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return listener


def supervise_workers(name: str, settings: Settings, count: int) -> int:
    """Run ``count`` worker processes of service ``name`` behind one port: this process binds the port and each
    worker (the same command line) accepts connections on the inherited socket; the kernel spreads them. Each
    worker is a whole service process (its own consumers and loops). SIGTERM/SIGINT stop every worker; a worker
    that exits by itself stops the others (the stack sees the service gone). Returns the exit code."""
    migrate(settings.database_url)  # once, before the workers (each finds the schema current)
    host = settings.services.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = no_delay(socket.create_server((host, settings.services.port(name)), family=family, backlog=2048))
    listener.set_inheritable(True)
    env = {**os.environ, LISTEN_FD_ENV: str(listener.fileno())}
    command = [sys.executable, *sys.orig_argv[1:]]
    workers = [subprocess.Popen(command, env=env, pass_fds=(listener.fileno(),)) for _ in range(count)]
    log.info("%s: %d workers on port %d: pids %s", name, count, settings.services.port(name), [w.pid for w in workers])
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("%s: signal %d, stopping %d workers", name, signum, count)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    code = 0
    while not stop.wait(0.5):
        ended = [w for w in workers if w.poll() is not None]
        if ended:
            code = ended[0].returncode or 1
            log.error("%s: worker %d exited with %s; stopping the others", name, ended[0].pid, ended[0].returncode)
            break
    listener.close()
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=WORKER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    log.info("%s: workers stopped", name)
    return code


def _stop_with_parent(stop: Callable[[], None]) -> Callable[[threading.Event], None]:
    """A worker stops when its supervisor is gone (killed without a chance to stop it)."""
    parent = os.getppid()

    def watch_parent(stop_event: threading.Event) -> None:
        while not stop_event.wait(1.0):
            if os.getppid() != parent:
                log.error("the supervisor (pid %d) is gone: stopping", parent)
                stop()
                return

    return watch_parent


def _exits_process_on_failure(
    loop: Callable[[threading.Event], None], died: list[str], stop_process: Callable[[], None]
) -> Callable[[threading.Event], None]:
    """A service loop whose failure stops the process (which then exits with status 1, and the supervisor of
    ``driftloop up`` starts it again): a thread that died must not leave a process that says it is ready. (A loop
    that heals catches what it recovers from, e.g. ``bus.keep_consuming``; what escapes it is not recoverable here.)"""

    @functools.wraps(loop)
    def guarded(stop_event: threading.Event) -> None:
        try:
            loop(stop_event)
        except BaseException:
            if not stop_event.is_set():
                log.critical("service loop %s died: stopping the process", loop.__name__, exc_info=True)
                died.append(loop.__name__)
                stop_process()
            raise

    return guarded


def run(
    name: str,
    build: Callable[[Runtime], ServiceSpec],
    tasks: Mapping[str, ServiceTask] | None = None,
    replicas: Callable[[Settings], int] | None = None,
) -> None:
    """Run a service process until SIGTERM/SIGINT: HTTP app in the main thread, consumers in threads. With an
    argument, run that one task of ``tasks`` instead and exit. ``replicas(settings)`` above 1: that many complete
    service processes behind the one port (``supervise_workers``; serving: each follows promotions itself); a
    ``ServiceSpec.workers`` above 1: HTTP-only workers beside this process (``driftloop.runtime.workers``;
    features: one Spark, one set of consumers)."""
    if len(sys.argv) > 1:
        run_task(name, tasks or {}, sys.argv[1:])
        return
    role = workers.worker_role()
    if role is not None:
        _run_http_worker(name, build, *role)
        return
    inherited = os.environ.get(LISTEN_FD_ENV)
    try:
        settings = load_settings()
        log_path = configure_logging(settings, name)
        count = replicas(settings) if replicas is not None and inherited is None else 1
        if count > 1:
            raise SystemExit(supervise_workers(name, settings, count))
        runtime = make_runtime(name, settings)
        spec = build(runtime)
    except DriftloopError as exc:
        print(f"driftloop {name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("%s starting; log file %s", name, log_path)
    if name != "schemaregistry":
        runtime.bus.register_event_schemas()
        runtime.bus.connect_producer()
    _add_health(spec.app, runtime, spec)

    threads = []
    for consumer in spec.consumers:
        t = threading.Thread(
            target=runtime.bus.run_consumer,
            args=(consumer.group, consumer.handlers),
            kwargs={"broadcast": consumer.broadcast, "prompt": consumer.prompt},
            name=consumer.group,
            daemon=True,
        )
        threads.append(t)
    loops = list(spec.loops)
    if name != "schemaregistry":  # the registry decodes no events (it is what decoding asks)
        loops.append(follow(runtime.pipelines, runtime.bus, name))
    if inherited is not None:
        loops.append(_stop_with_parent(lambda: os.kill(os.getpid(), signal.SIGTERM)))
    died: list[str] = []
    for loop in loops:
        guarded = _exits_process_on_failure(loop, died, lambda: os.kill(os.getpid(), signal.SIGTERM))
        threads.append(
            threading.Thread(target=guarded, args=(runtime.bus.stop_event,), name=loop.__name__, daemon=True)
        )
    for t in threads:
        t.start()

    config = server_config(spec.app, settings, name)
    server = Server(config)
    sockets, http_workers = None, []
    if spec.workers > 1:
        sock = no_delay(config.bind_socket())
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
        # A full replica accepts on the socket its supervisor bound; HTTP workers share the first process's socket.
        if inherited is not None:
            sockets = [socket.socket(fileno=int(inherited))]
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
    if died:
        log.error("%s: exiting with status 1: loop(s) %s died", name, ", ".join(died))
        raise SystemExit(1)
