"""The services' HTTP server (``runtime.service.Server``): uvicorn's, waking once a second at rest instead of ten
times; it still answers with a Date header and stops when told from another thread."""

from __future__ import annotations

import threading

import httpx
import uvicorn
from fastapi import FastAPI

from driftloop.ops.procs import free_port, http_ready, wait_until
from driftloop.runtime.service import Server


def test_the_server_answers_with_a_date_and_stops_when_told_from_another_thread() -> None:
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"ok": "yes"}

    port = free_port()
    server = Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: http_ready(f"http://127.0.0.1:{port}/ping"), 30, "the server")
        answer = httpx.get(f"http://127.0.0.1:{port}/ping")
        assert answer.json() == {"ok": "yes"}
        assert answer.headers["date"].endswith("GMT")
    finally:
        server.should_exit = True  # from this thread: the server's loop is woken, not left to its next tick
        thread.join(timeout=30)
    assert not thread.is_alive()
