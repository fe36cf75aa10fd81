"""API tokens, checked once for every service by ``base_app``.

Rule: a mutating call (POST, PUT, PATCH, DELETE) needs an admin token, unless its route is public (the data
plane: ``security.public_routes``, or a route declared with ``openapi_extra=PUBLIC``). Reads are open, or need a
read or admin token when ``security.protect_reads``. No token: 401 (``AuthenticationRequired``, answered with
``WWW-Authenticate: Bearer``); a token of the wrong scope: 403 (``PermissionDenied``).
``/healthz`` and ``/metrics`` are always open.

Enforcement is on when ``security.enabled`` and at least one admin token is known (``security.admin_tokens`` or
the file ``<home>/admin.token``, which ``driftloop up`` writes when none is configured). Without any token the
APIs are open: settings built without tokens (tests, experiments) keep working.
"""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from driftloop.clients.credentials import read_token_file
from driftloop.contracts.settings import SecuritySettings, Settings
from driftloop.errors import AuthenticationRequired, PermissionDenied

log = logging.getLogger(__name__)

ADMIN = "admin"
READ = "read"
GENERATED_TOKEN_NAME = "local-admin"
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ALWAYS_OPEN_PATHS = frozenset({"/healthz", "/metrics"})
# Declare a route public from its service: ``@api.post(..., openapi_extra=PUBLIC)``.
PUBLIC_MARK = "x-driftloop-public"
PUBLIC: dict[str, Any] = {PUBLIC_MARK: True}

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="BearerToken",
    description="An admin token for mutating calls; a read or admin token for reads when reads are protected.",
)


@dataclass(frozen=True)
class Principal:
    name: str
    scope: str  # "admin" | "read" | "anonymous" (security off or public route without a token)


ANONYMOUS = Principal("anonymous", "anonymous")


_PATH_PARAM = re.compile(r"\{[^}]*\}")


def _route_key(method: str, path: str) -> str:
    return f"{method.upper()} {_PATH_PARAM.sub('{}', path.strip())}"


class TokenChecker:
    """The dependency ``base_app`` installs on every route."""

    def __init__(self, settings: Settings | None) -> None:
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
        self.enforced = security.enabled and any(p.scope == ADMIN for _, p in self.tokens)
        self.public = {_route_key(*entry.split(maxsplit=1)) for entry in security.public_routes if " " in entry}

    def identify(self, token: str) -> Principal | None:
        found = None
        for known, principal in self.tokens:
            # Compare against every token in constant time: no early exit that leaks which one matched.
            if hmac.compare_digest(known.encode(), token.encode()) and found is None:
                found = principal
        return found

    def is_public(self, request: Request) -> bool:
        route = request.scope.get("route")
        path = getattr(route, "path", request.url.path)
        if (getattr(route, "openapi_extra", None) or {}).get(PUBLIC_MARK):
            return True
        return _route_key(request.method, path) in self.public

    def __call__(self, request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
        if not self.enforced or request.url.path in ALWAYS_OPEN_PATHS:
            return ANONYMOUS
        principal = self.identify(credentials.credentials) if credentials else None
        mutating = request.method.upper() in MUTATING_METHODS
        if mutating and self.is_public(request):
            return principal or ANONYMOUS
        if not mutating and not self.security.protect_reads:
            return principal or ANONYMOUS
        if credentials is None:
            raise AuthenticationRequired("this endpoint needs a bearer token (Authorization: Bearer <token>)")
        if principal is None:
            raise AuthenticationRequired("unknown or revoked token")
        if mutating and principal.scope != ADMIN:
            raise PermissionDenied(f"token {principal.name!r} has the {principal.scope} scope; this needs admin")
        return principal


def principal_of(request: Request) -> Principal:
    """Who is calling (set by the token check); ``anonymous`` when security is off."""
    return getattr(request.state, "principal", ANONYMOUS)
