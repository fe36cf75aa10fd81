"""``RequestGuard`` (``driftloop.runtime.service``): the token is checked from the headers before a byte of the body
is read; every route's body is capped, by its declared length or as it streams in (chunked); the HTTP server closes
connections that do not send their request head; a stock confluent_kafka client registers its stream's schema with
a producer token."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn
from fastapi import APIRouter
from pydantic import BaseModel

from driftloop.contracts.settings import Settings
from driftloop.ops.procs import free_port, http_ready, wait_until
from driftloop.runtime.service import base_app, body_limit, server_config

ADMIN = "guard-admin-token"
PRODUCER = "guard-producer-token"
SECURITY = {"admin_tokens": {"ops": ADMIN}, "producer_tokens": {"app": PRODUCER}}
CAP = 64 * 1024


class Thing(BaseModel):
    name: str


def guarded_app(tmp_path: Path, **security: Any) -> Any:
    settings = Settings(home=tmp_path, security={**SECURITY, **security}, services={"max_body_bytes": CAP})
    app = base_app(SimpleNamespace(name="probe", settings=settings), "probe")  # type: ignore[arg-type]
    api = APIRouter()

    @api.post("/v1/things")
    def make(thing: Thing) -> dict:
        return {"made": thing.name}

    @api.post("/v1/models/{name}/predict")
    def predict(name: str, thing: Thing) -> dict:  # public by the default security.public_routes
        return {"model": name}

    @api.post("/v1/big", openapi_extra=body_limit(4 * CAP))
    def big(thing: Thing) -> dict:
        return {"size": len(thing.name)}

    app.include_router(api)
    return app


def call(app: Any, path: str, chunks: list[bytes], headers: dict[str, str]) -> tuple[int, dict, int]:
    """Send ``chunks`` as the body of ``POST path`` straight to the ASGI app: (status, headers, chunks read)."""
    read = 0
    answer: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        nonlocal read
        if read < len(chunks):
            read += 1
            return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}
        await asyncio.sleep(3600)  # a client that sent everything and waits
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (k.lower().encode(), v.encode()) for k, v in {"content-type": "application/json", **headers}.items()
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    return answer["status"], answer["headers"], read


def test_no_token_is_a_401_before_any_of_the_body_is_read(tmp_path: Path) -> None:
    app = guarded_app(tmp_path)
    huge = [b"x" * 1024 * 1024] * 50  # 50 MB, declared
    status, headers, read = call(app, "/v1/things", huge, {"content-length": str(50 * 1024 * 1024)})
    assert (status, read) == (401, 0) and headers["www-authenticate"] == "Bearer"
    # Malformed JSON without a token: 401, not 422.
    assert call(app, "/v1/things", [b"{not json"], {"content-type": "application/json"})[:1] == (401,)
    # A producer token on an admin route: 403, still unread.
    status, _, read = call(app, "/v1/things", huge, {"authorization": f"Bearer {PRODUCER}"})
    assert (status, read) == (403, 0)


def test_a_declared_length_over_the_cap_is_refused_unread_and_a_chunked_body_as_it_streams(tmp_path: Path) -> None:
    app = guarded_app(tmp_path)
    admin = {"authorization": f"Bearer {ADMIN}"}
    status, _, read = call(app, "/v1/things", [b"x" * (CAP + 1)], {**admin, "content-length": str(CAP + 1)})
    assert (status, read) == (413, 0)
    # Chunked (no length): refused once the count passes the cap, without reading the rest.
    chunks = [b"x" * 1024] * 1000
    status, _, read = call(app, "/v1/things", chunks, admin)
    assert status == 413 and read == CAP // 1024 + 1
    # The public data plane has the same cap.
    status, _, read = call(app, "/v1/models/m/predict", chunks, {})
    assert status == 413 and read == CAP // 1024 + 1
    # Under the cap a body reaches the route whole, in chunks too.
    body = b'{"name": "' + b"a" * 100 + b'"}'
    assert call(app, "/v1/things", [body[:5], body[5:]], admin)[0] == 200
    # A route declaring a larger cap takes a body over the default one.
    body = b'{"name": "' + b"a" * (2 * CAP) + b'"}'
    assert call(app, "/v1/big", [body], admin)[0] == 200


def test_server_config_carries_the_limits_of_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        services={"header_timeout_seconds": 3, "max_concurrency": 7, "max_header_bytes": 4096},
    )
    config = server_config(guarded_app(tmp_path), settings, "registry")
    assert (config.timeout_keep_alive, config.limit_concurrency, config.h11_max_incomplete_event_size) == (3, 7, 4096)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The guarded app on a real uvicorn server (header timeout 1 s) in a thread: (host, port)."""
    port = free_port()
    settings = Settings(home=tmp_path, services={"registry_port": port, "header_timeout_seconds": 1})
    server = uvicorn.Server(server_config(guarded_app(tmp_path), settings, "registry"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: http_ready(f"http://127.0.0.1:{port}/docs"), 20, "the test server")
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(timeout=10)


def test_a_connection_that_never_finishes_its_request_head_is_closed(served: tuple[str, int]) -> None:
    with socket.create_connection(served) as idle, socket.create_connection(served) as slow:
        slow.sendall(b"POST /v1/things HTTP/1.1\r\nHost: x\r\n")  # and never the end of the head
        for conn in (idle, slow):
            conn.settimeout(30)  # a bound for the test only: the server closes well before
            assert conn.recv(1024) == b""  # closed by the server


def test_a_request_head_over_the_limit_is_refused(served: tuple[str, int]) -> None:
    # Over max_header_bytes (16 KiB), under the parser's own head limit: the guard's 414.
    with socket.create_connection(served) as conn:
        conn.settimeout(30)
        conn.sendall(b"GET /v1/" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = conn.recv(1024)
        assert answer.startswith(b"HTTP/1.1 414"), answer
    # Far over: the HTTP parser refuses the head itself (httptools: 400), never a 5xx or a hang.
    with socket.create_connection(served) as conn:
        conn.settimeout(30)
        conn.sendall(b"GET /v1/" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = conn.recv(1024)
        assert answer[:10] == b"HTTP/1.1 4", answer
