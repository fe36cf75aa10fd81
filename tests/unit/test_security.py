"""The token rules of ``driftloop.runtime.security``: the embedded stack's generated token, settings passed to child
processes, and which calls need which scope (on a small app built by ``base_app``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from driftloop.clients.credentials import (
    auth_headers,
    client_token,
    ensure_admin_token,
    schema_registry_client_config,
    token_file,
)
from driftloop.contracts.settings import Settings, load_settings, settings_env
from driftloop.runtime.security import PUBLIC
from driftloop.runtime.service import base_app


def app_for(settings: Settings) -> TestClient:
    app = base_app(SimpleNamespace(name="probe", settings=settings), "probe")  # type: ignore[arg-type]
    api = APIRouter(prefix="/v1")

    @api.get("/things")
    def things() -> dict:
        return {"ok": True}

    @api.post("/things/{thing}/poke")
    def poke(thing: str) -> dict:
        return {"poked": thing}

    @api.post("/streams/{name}/records")
    def records(name: str) -> dict:  # public by the default security.public_routes (parameter name differs)
        return {"stream": name}

    @api.delete("/things/{thing}", openapi_extra=PUBLIC)
    def delete_public(thing: str) -> dict:  # declared public by its service
        return {"deleted": thing}

    app.include_router(api)
    return TestClient(app)


def test_without_any_token_the_api_is_open(tmp_path: Path) -> None:
    client = app_for(Settings(home=tmp_path))
    assert client.post("/v1/things/a/poke").status_code == 200
    assert client.get("/v1/things").status_code == 200


def test_generated_token_file_is_private_reused_and_enforced(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    token = ensure_admin_token(settings)
    assert token and token_file(settings).stat().st_mode & 0o777 == 0o600
    assert ensure_admin_token(settings) == token  # a second `up` keeps it
    assert client_token(settings) == token and auth_headers(settings) == {"Authorization": f"Bearer {token}"}
    config = schema_registry_client_config(settings)
    assert config["bearer.auth.token"] == token and config["bearer.auth.credentials.source"] == "STATIC_TOKEN"

    client = app_for(settings)
    assert client.post("/v1/things/a/poke").status_code == 401
    assert client.post("/v1/things/a/poke", headers=auth_headers(settings)).json() == {"poked": "a"}
    assert client.post("/v1/streams/s/records").status_code == 200
    assert client.delete("/v1/things/a").status_code == 200
    assert client.get("/v1/things").status_code == 200


def test_security_disabled_writes_no_token_and_stays_open(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, security={"enabled": False, "admin_tokens": {"ops": "x" * 12}})
    assert ensure_admin_token(settings) is None and not token_file(settings).exists()
    assert app_for(settings).post("/v1/things/a/poke").status_code == 200


def test_scopes_and_protected_reads(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        security={
            "admin_tokens": {"ops": "admin-token-1"},
            "read_tokens": {"grafana": "read-token-1"},
            "protect_reads": True,
            "public_routes": [],
        },
    )
    client = app_for(settings)
    admin, reader = {"Authorization": "Bearer admin-token-1"}, {"Authorization": "Bearer read-token-1"}
    assert client.get("/v1/things").status_code == 401
    assert client.get("/v1/things", headers=reader).status_code == 200
    assert client.get("/v1/things", headers=admin).status_code == 200
    forbidden = client.post("/v1/things/a/poke", headers=reader)
    assert forbidden.status_code == 403 and "grafana" in forbidden.json()["detail"]
    assert client.post("/v1/things/a/poke", headers={"Authorization": "Basic admin-token-1"}).status_code == 401
    # With an empty public list, record ingestion needs the admin token too.
    assert client.post("/v1/streams/s/records").status_code == 401
    assert client.post("/v1/streams/s/records", headers=admin).status_code == 200
    assert client.get("/metrics").status_code == 200


def test_tokens_survive_the_trip_to_a_child_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(security={"admin_tokens": {"ops": "s3cret-s3cret"}, "read_tokens": {"r": "r3ad-r3ad-r3ad"}})
    env = settings_env(settings)
    assert env["DRIFTLOOP_SECURITY__ADMIN_TOKENS"] == '{"ops": "s3cret-s3cret"}'
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    loaded = load_settings()
    assert loaded.security.admin_tokens["ops"].get_secret_value() == "s3cret-s3cret"
    assert loaded.security.read_tokens["r"].get_secret_value() == "r3ad-r3ad-r3ad"
    assert loaded.security.public_routes == settings.security.public_routes


def test_short_or_empty_tokens_are_refused_naming_the_token() -> None:
    from driftloop.errors import ConfigError

    for bad in ("", "   ", "short"):
        with pytest.raises(ConfigError, match=r"security\.admin_tokens.*'ops'.*shorter than 12"):
            load_settings(security={"admin_tokens": {"ops": bad}})


def test_public_routes_must_be_a_mutating_method_and_a_path() -> None:
    from driftloop.errors import ConfigError

    for bad in ("/v1/models/{name}/predict", "GET /v1/models", "POST v1/x"):
        with pytest.raises(ConfigError, match=r"security\.public_routes"):
            load_settings(security={"public_routes": [bad]})
