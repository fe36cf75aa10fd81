"""API tokens, checked once for every service by ``base_app`` (its ``RequestGuard`` middleware, from the request's
headers alone: before a byte of the body is read).

Scopes, each a token kind of ``security`` settings:

- ``admin``: everything.
- ``read``: reads (GET, HEAD), and the POSTs that only look things up (``LOOKUP_ROUTES``: online features, the
  schema registry's lookup and compatibility check).
- ``producer``: what ``read`` may, plus posting records and registering schemas (``PRODUCER_ROUTES``); with
  ``security.token_streams`` only for those streams (the subjects of their topics: ``<topic>-value``, ...).
- ``serving``: what ``read`` may, plus predict, infer and feedback (``SERVING_ROUTES``); with
  ``security.token_models`` only for those models.

Any other mutating call (POST, PUT, PATCH, DELETE) needs an admin token, unless its route is public (the data
plane: ``security.public_routes``, or a route declared with ``openapi_extra=PUBLIC``). Reads are open, or need a
token of any scope when ``security.protect_reads``. No token or an unknown one: 401 (``AuthenticationRequired``,
answered with ``WWW-Authenticate: Bearer``); a token of the wrong scope, or outside its streams or models: 403
(``PermissionDenied``). ``/healthz``, ``/metrics`` and the OpenAPI (``/openapi.json``, ``/docs``) are always
open.

Enforcement is on when ``security.enabled`` and at least one admin token is known (``security.admin_tokens`` or
the file ``<home>/admin.token``, which ``driftloop up`` writes when none is configured). Without any token the
APIs are open: settings built without tokens (tests, experiments) keep working.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.security import HTTPBearer

from driftloop.clients.credentials import read_token_file
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.contracts.settings import SecuritySettings, Settings
from driftloop.errors import AuthenticationRequired, PermissionDenied

log = logging.getLogger(__name__)

ADMIN = "admin"
READ = "read"
PRODUCER = "producer"
SERVING = "serving"
SCOPES = (ADMIN, READ, PRODUCER, SERVING)
GENERATED_TOKEN_NAME = "local-admin"
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Health, metrics and the API's own description (what a client needs to find out how to authenticate).
ALWAYS_OPEN_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
# Declare a route public from its service: ``@api.post(..., openapi_extra=PUBLIC)``.
PUBLIC_MARK = "x-driftloop-public"
PUBLIC: dict[str, Any] = {PUBLIC_MARK: True}

# Mutating routes that scopes other than admin may call ("METHOD /path", path parameters as ``{}``).
LOOKUP_ROUTES = frozenset(
    {
        "POST /v1/features/online",
        "POST /subjects/{}",
        "POST /compatibility/subjects/{}/versions",
        "POST /compatibility/subjects/{}/versions/{}",
    }
)
PRODUCER_ROUTES = frozenset({"POST /v1/streams/{}/records", "POST /subjects/{}/versions"})
SERVING_ROUTES = frozenset({"POST /v1/models/{}/predict", "POST /v1/models/{}/feedback", "POST /v2/models/{}/infer"})
# The scopes (besides admin) allowed on each of those routes.
ROUTE_SCOPES: dict[str, frozenset[str]] = {
    **{route: frozenset({READ, PRODUCER, SERVING}) for route in LOOKUP_ROUTES},
    **{route: frozenset({PRODUCER}) for route in PRODUCER_ROUTES},
    **{route: frozenset({SERVING}) for route in SERVING_ROUTES},
}

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="BearerToken",
    description=(
        "admin: any call; read: reads and lookups; producer: also records and schema registration; serving: also "
        "predict, infer and feedback. Reads need a token only when reads are protected."
    ),
)


@dataclass(frozen=True)
class Principal:
    name: str
    scope: str  # "admin" | "read" | "producer" | "serving" | "anonymous" (security off, or public route)
    # A producer token's streams / a serving token's models; None: not restricted.
    only: frozenset[str] | None = None


ANONYMOUS = Principal("anonymous", "anonymous")


_PATH_PARAM = re.compile(r"\{[^}]*\}")


def route_key(method: str, path: str) -> str:
    """``"POST /v1/models/{}/predict"``: a route's method and path with its parameters unnamed."""
    return f"{method.upper()} {_PATH_PARAM.sub('{}', path.strip())}"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None for no header or another scheme."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class TokenChecker:
    """Which principal a request is, and whether it may call the route: ``authorize``, run by ``base_app``'s
    ``RequestGuard`` before the route's body is read."""

    def __init__(self, settings: Settings | None, pipelines: Mapping[str, PipelineConfig] | None = None) -> None:
        security = settings.security if settings is not None else SecuritySettings(enabled=False)
        self.security = security
        self.tokens: list[tuple[str, Principal]] = []
        if settings is not None and security.enabled:
            for name, secret in security.admin_tokens.items():
                self.tokens.append((secret.get_secret_value(), Principal(name, ADMIN)))
            from_file = read_token_file(settings)
            if from_file and not security.admin_tokens:
                self.tokens.append((from_file, Principal(GENERATED_TOKEN_NAME, ADMIN)))
            for name, secret in security.read_tokens.items():
                self.tokens.append((secret.get_secret_value(), Principal(name, READ)))
            for name, secret in security.producer_tokens.items():
                streams = security.token_streams.get(name)
                only = frozenset(streams) if streams is not None else None
                self.tokens.append((secret.get_secret_value(), Principal(name, PRODUCER, only)))
            for name, secret in security.serving_tokens.items():
                models = security.token_models.get(name)
                only = frozenset(models) if models is not None else None
                self.tokens.append((secret.get_secret_value(), Principal(name, SERVING, only)))
        self.enforced = security.enabled and any(p.scope == ADMIN for _, p in self.tokens)
        self.public = {route_key(*entry.split(maxsplit=1)) for entry in security.public_routes if " " in entry}
        self.pipelines: Mapping[str, PipelineConfig] = pipelines or {}  # read each time: they change live

    @property
    def topics(self) -> dict[str, str]:
        """stream -> topic, to tell the subjects of a producer's streams."""
        return {cfg.stream.name: cfg.stream.topic for cfg in self.pipelines.values()}

    def identify(self, token: str) -> Principal | None:
        found = None
        for known, principal in self.tokens:
            # Compare against every token in constant time: no early exit that leaks which one matched.
            if hmac.compare_digest(known.encode(), token.encode()) and found is None:
                found = principal
        return found

    def is_public(self, method: str, path: str, openapi_extra: Mapping[str, Any] | None) -> bool:
        if (openapi_extra or {}).get(PUBLIC_MARK):
            return True
        return route_key(method, path) in self.public

    def authorize(
        self,
        method: str,
        request_path: str,
        route_path: str | None,
        path_params: Mapping[str, Any],
        token: str | None,
        openapi_extra: Mapping[str, Any] | None = None,
    ) -> Principal:
        """The caller of ``method route_path`` (``request_path`` when no route matched) with ``token``;
        AuthenticationRequired (401) or PermissionDenied (403) when it may not call it."""
        if not self.enforced or request_path in ALWAYS_OPEN_PATHS:
            return ANONYMOUS
        path = route_path or request_path
        principal = self.identify(token) if token else None
        mutating = method.upper() in MUTATING_METHODS
        if mutating and self.is_public(method, path, openapi_extra):
            return principal or ANONYMOUS
        if not mutating and not self.security.protect_reads:
            return principal or ANONYMOUS
        if token is None:
            raise AuthenticationRequired("this endpoint needs a bearer token (Authorization: Bearer <token>)")
        if principal is None:
            raise AuthenticationRequired("unknown or revoked token")
        if principal.scope == ADMIN or not mutating:
            return principal
        key = route_key(method, path)
        allowed = ROUTE_SCOPES.get(key, frozenset())
        if principal.scope not in allowed:
            needs = " or ".join([ADMIN, *sorted(allowed)])
            raise PermissionDenied(f"token {principal.name!r} has the {principal.scope} scope; this needs {needs}")
        if principal.only is not None and key not in LOOKUP_ROUTES:
            self._check_restriction(principal, key, path_params)
        return principal

    def _check_restriction(self, principal: Principal, key: str, path_params: Mapping[str, Any]) -> None:
        assert principal.only is not None
        target = str(next(iter(path_params.values()), ""))  # each of these routes has one name in its path
        if key == "POST /subjects/{}/versions":
            topics = [self.topics[s] for s in sorted(principal.only) if s in self.topics]
            # TopicNameStrategy (<topic>-value, <topic>-key) and TopicRecordNameStrategy (<topic>-<record>).
            if not any(target.startswith(f"{topic}-") for topic in topics):
                raise PermissionDenied(
                    f"token {principal.name!r} may register schemas only under the subjects of the topics of "
                    f"streams {sorted(principal.only)} (<topic>-value, <topic>-key), not {target!r}"
                )
            return
        what = "streams" if principal.scope == PRODUCER else "models"
        if target not in principal.only:
            raise PermissionDenied(
                f"token {principal.name!r} is limited to {what} {sorted(principal.only)}; {target!r} is not one"
            )


def principal_of(request: Request) -> Principal:
    """Who is calling (set by the token check); ``anonymous`` when security is off."""
    return getattr(request.state, "principal", ANONYMOUS)
