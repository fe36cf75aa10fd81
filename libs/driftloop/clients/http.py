"""The one HTTP client for calls to driftloop's services (CLI, demo, stack health checks, service to service).

One place for the base URL (from settings), the bearer token, timeouts, retries of connection failures (idempotent
methods only) and the mapping of error answers to the exception tree (``driftloop.errors``): a 404 raises
``NotFoundError``, a 409 ``ConflictError``, and so on, with the service's own ``detail`` in the message. A service
that does not answer raises ``ServiceError`` with code ``unreachable`` (503) or ``timeout`` (504): ``NO_ANSWER``.
So a caller that must not fail (a dashboard panel, an optional lookup) catches ``DriftloopError`` and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Mapping
from typing import Any

import httpx

from driftloop.clients.retry import retry
from driftloop.contracts.settings import Settings
from driftloop.errors import ERROR_BY_STATUS, DriftloopError, ServiceError, ValidationFailed

log = logging.getLogger(__name__)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
DEFAULT_TIMEOUT = 60.0
# The codes of the ServiceError raised when a service gives no answer at all (as opposed to an error answer).
NO_ANSWER = frozenset({"unreachable", "timeout"})


def error_from_response(response: httpx.Response, what: str) -> DriftloopError:
    """The exception-tree error an error answer stands for; the message keeps the status and the detail."""
    code: str | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail: Any = body.get("detail", body.get("message", response.text))
        code = body.get("code") if isinstance(body.get("code"), str) else None
    else:
        detail = response.text
    message = f"{what} answered {response.status_code}: {detail}"
    status = response.status_code
    if status == 422:
        return ValidationFailed(code or "validation_failed", None, message)
    cls = ERROR_BY_STATUS.get(status)
    if cls is None:
        return ServiceError(message, status_code=status, code=code)
    return cls(message, code=code)


class BearerToken(httpx.Auth):
    """The ``Authorization: Bearer`` header, with the token asked of ``token()`` for every request."""

    def __init__(self, token: Callable[[], str | None]) -> None:
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.token()
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
        yield request


class ServiceClient:
    """Calls one service (``registry``, ``serving``, ...) at the URL the settings give, with the settings' token.

    ``base_url`` and ``token`` override the settings (a client of a remote platform). ``token`` may be a function,
    asked for every request: for a client made before the token exists (``driftloop up`` writes
    ``<home>/admin.token``), pass ``token=partial(client_token, settings)``. ``timeout`` is the default of every
    call (a call may pass its own). ``retries`` is how often a connection failure of an idempotent call is retried
    (with a short growing pause; 0 for a caller that would rather say "unavailable" at once)."""

    def __init__(
        self,
        service: str,
        settings: Settings | None = None,
        *,
        base_url: str | None = None,
        token: str | Callable[[], str | None] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if base_url is None:
            if settings is None:
                raise ValueError("ServiceClient needs settings or a base_url")
            base_url = settings.services.url(service)
        if token is None and settings is not None:
            from driftloop.clients.credentials import client_token

            token = client_token(settings)
        self.service = service
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        auth = BearerToken(token if callable(token) else lambda: token)
        self._http = httpx.Client(base_url=self.base_url, auth=auth, timeout=timeout, transport=transport)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """The answer of a successful call (2xx/3xx); an error answer raises from the exception tree."""
        method = method.upper()
        attempts = 1 + (self.retries if method in IDEMPOTENT_METHODS else 0)
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}

        def send() -> httpx.Response:
            return self._http.request(method, path, params=params, json=json, content=content, headers=headers, **extra)

        try:
            response = retry(
                send,
                attempts=attempts,
                retry_on=(httpx.ConnectError,),
                first_delay=0.2,
                max_delay=2.0,
                # Quietly: the caller (a CLI command, a health wait) says what an unreachable service means.
                on_retry=lambda attempt, exc, delay: log.debug(
                    "%s %s%s: %r (attempt %d); retrying in %.2f s", method, self.base_url, path, exc, attempt, delay
                ),
            )
        except httpx.ConnectError:
            raise ServiceError(
                f"the {self.service} service does not answer at {self.base_url}: is the stack up (`driftloop up`)?",
                status_code=503,
                code="unreachable",
            ) from None
        except httpx.TimeoutException:
            raise ServiceError(
                f"the {self.service} service did not answer {method} {path} in time",
                status_code=504,
                code="timeout",
            ) from None
        except httpx.TransportError as exc:  # the connection broke before an answer came
            raise ServiceError(
                f"the {self.service} service at {self.base_url} gave no answer to {method} {path}: {exc!r}",
                status_code=503,
                code="unreachable",
            ) from None
        if response.status_code >= 400:
            raise error_from_response(response, self.service)
        return response

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """A call whose answer is JSON: the decoded body."""
        return self.request(method, path, **kwargs).json()

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.call("POST", path, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def probe_health(url: str, timeout: float = 2.0) -> tuple[bool, bool]:
    """``(healthy, ready)`` of a health URL: healthy when it answers 200; ready when a driftloop ``/healthz`` says
    so (a plain-text 200, such as Prometheus' ``/-/ready``, is ready)."""
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return False, False
    if response.status_code != 200:
        return False, False
    try:
        body = response.json()
    except ValueError:
        return True, True
    return True, bool(body.get("ready", True)) if isinstance(body, dict) else True


def http_ready(url: str, timeout: float = 2.0) -> bool:
    """Whether a health URL answers ready (see ``probe_health``)."""
    return probe_health(url, timeout)[1]
