"""The one HTTP client: the token (fixed or asked per request), error answers mapped to the exception tree,
connection failures retried for idempotent calls only, and "no answer" told apart from an error answer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from driftloop.clients.credentials import TOKEN_FILE, client_token
from driftloop.clients.http import NO_ANSWER, ServiceClient
from driftloop.contracts.settings import Settings
from driftloop.errors import ConflictError, NotFoundError, ServiceError, ServiceUnavailable, ValidationFailed


def client_of(handler: Callable[[httpx.Request], httpx.Response], **kwargs: object) -> ServiceClient:
    return ServiceClient("registry", base_url="http://registry.test", transport=httpx.MockTransport(handler), **kwargs)


def test_a_fixed_token_is_sent_as_a_bearer_header() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, json={"ok": True})

    assert client_of(handler, token="s3cret-token-123").get("/v1/models") == {"ok": True}
    assert client_of(handler).get("/v1/models") == {"ok": True}
    assert seen == ["Bearer s3cret-token-123", None]


def test_a_token_function_is_asked_for_every_request(tmp_path: Path) -> None:
    """The demo and the dashboard exist before `driftloop up` writes <home>/admin.token: they send it once it is
    there."""
    settings = Settings(home=tmp_path)
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, json={})

    client = client_of(handler, token=lambda: client_token(settings))
    client.get("/a")
    (tmp_path / TOKEN_FILE).write_text("written-after-the-client\n")
    client.get("/b")
    assert seen == [None, "Bearer written-after-the-client"]


@pytest.mark.parametrize(
    ("status", "error"),
    [(404, NotFoundError), (409, ConflictError), (422, ValidationFailed), (503, ServiceUnavailable)],
)
def test_error_answers_raise_their_class_of_the_tree_with_the_detail(status: int, error: type[Exception]) -> None:
    client = client_of(lambda _request: httpx.Response(status, json={"detail": "what went wrong"}))
    with pytest.raises(error, match=f"registry answered {status}: what went wrong"):
        client.get("/v1/models/x")


def test_an_unnamed_error_status_is_a_service_error_keeping_it() -> None:
    client = client_of(lambda _request: httpx.Response(418, text="teapot"))
    with pytest.raises(ServiceError) as caught:
        client.post("/v1/brew")
    assert caught.value.http_status == 418 and caught.value.code not in NO_ANSWER


def test_connection_failures_of_idempotent_calls_are_retried_then_say_unreachable() -> None:
    calls: list[str] = []

    def refused(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(ServiceError, match=r"does not answer at http://registry\.test") as caught:
        client_of(refused, retries=2).get("/v1/models")
    assert caught.value.code == "unreachable" and caught.value.http_status == 503
    assert calls == ["GET"] * 3
    calls.clear()
    with pytest.raises(ServiceError):
        client_of(refused, retries=2).post("/v1/models/x/rollback")
    assert calls == ["POST"]  # a POST that may have arrived is never sent twice


def test_a_connection_that_came_back_is_used() -> None:
    answers = iter([httpx.ConnectError("refused"), httpx.Response(200, json={"up": True})])

    def flaky(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert client_of(flaky, retries=1).get("/healthz") == {"up": True}


def test_no_answer_in_time_and_a_broken_connection_are_no_answer() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("closed", request=request)

    with pytest.raises(ServiceError) as timed_out:
        client_of(slow).get("/v1/models")
    with pytest.raises(ServiceError) as cut:
        client_of(broken).get("/v1/models")
    assert (timed_out.value.code, timed_out.value.http_status) == ("timeout", 504)
    assert {timed_out.value.code, cut.value.code} <= NO_ANSWER


def test_a_call_may_pass_its_own_timeout() -> None:
    seen: list[dict[str, float]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json={})

    client = client_of(handler, timeout=7.0)
    client.get("/a")
    client.get("/b", timeout=1.5)
    assert [t["read"] for t in seen] == [7.0, 1.5]
