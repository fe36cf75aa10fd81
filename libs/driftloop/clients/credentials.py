"""The credentials a client of driftloop's services sends: the admin token of the settings or the embedded stack's
generated token file (or a token of another scope the caller holds, e.g. a producer token), as a bearer header or
as the schema registry client's configuration."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from driftloop.contracts.settings import Settings

TOKEN_FILE = "admin.token"


def token_file(settings: Settings) -> Path:
    return (settings.home / TOKEN_FILE).resolve()


def read_token_file(settings: Settings) -> str | None:
    path = token_file(settings)
    try:
        token = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return token or None


def ensure_admin_token(settings: Settings) -> str | None:
    """For the embedded stack: the admin token clients should use, generating ``<home>/admin.token`` (mode 600)
    when security is on and no admin token is configured. None when security is off."""
    if not settings.security.enabled:
        return None
    if settings.security.admin_tokens:
        return next(iter(settings.security.admin_tokens.values())).get_secret_value()
    existing = read_token_file(settings)
    if existing:
        return existing
    path = token_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = new_token()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.chmod(path, 0o600)
    return token


def new_token() -> str:
    """A new random token (256 bits, URL-safe): for ``driftloop tokens new`` and the generated admin token."""
    return secrets.token_urlsafe(32)


def client_token(settings: Settings) -> str | None:
    """The token the CLI and the demo send: the first configured admin token, else ``<home>/admin.token``."""
    if settings.security.admin_tokens:
        return next(iter(settings.security.admin_tokens.values())).get_secret_value()
    return read_token_file(settings)


def auth_headers(settings: Settings, token: str | None = None) -> dict[str, str]:
    """``Authorization: Bearer`` with ``token``, else with ``client_token``; nothing when there is none."""
    token = token or client_token(settings)
    return {"Authorization": f"Bearer {token}"} if token else {}


def schema_registry_client_config(settings: Settings, token: str | None = None) -> dict[str, Any]:
    """confluent_kafka SchemaRegistryClient config, with a bearer token for the embedded registry: ``token`` (e.g.
    a producer token, which may register its streams' schemas), else ``client_token``."""
    config: dict[str, Any] = {"url": settings.schema_registry.url}
    token = token or client_token(settings)
    if token and settings.schema_registry.embedded:
        config.update(
            {
                "bearer.auth.credentials.source": "STATIC_TOKEN",
                "bearer.auth.token": token,
                # Required by the client; our registry ignores it.
                "bearer.auth.logical.cluster": "driftloop",
            }
        )
    return config
