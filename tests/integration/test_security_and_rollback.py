"""Tokens on every service, and rollback with serving following.

Every service is built as ``driftloop.runtime.service.run`` builds it (real broker, schema registry, SQLite, Ray for
training), and every mutating route of its app is called: 401 without a token or with an unknown one, 403 with a
read token (but on the lookups that only read), never 401/403 with the admin token; public data-plane routes
answer without a token."""

from __future__ import annotations

import contextlib
import pkgutil
import re
import sys
from collections.abc import Callable, Iterator
from importlib import import_module
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pipeline_support import wait_for
from serving_support import Stack, rows

import driftloop.services
from driftloop.contracts.settings import Settings
from driftloop.runtime.security import PUBLIC_MARK
from driftloop.runtime.service import ServiceSpec, _add_health, make_runtime

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": "Bearer it-admin-token"}
READER = {"Authorization": "Bearer it-read-token"}
UNKNOWN = {"Authorization": "Bearer not-a-token"}
SECURITY = {"admin_tokens": {"ops": "it-admin-token"}, "read_tokens": {"grafana": "it-read-token"}}
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
# POSTs that only look things up (issue 15): a read token may call them.
LOOKUPS = {
    ("POST", "/v1/features/online"),
    ("POST", "/subjects/{}"),
    ("POST", "/compatibility/subjects/{}/versions"),
    ("POST", "/compatibility/subjects/{}/versions/{}"),
}
PUBLIC = {
    ("POST", "/v1/models/{}/predict"),
    ("POST", "/v1/models/{}/feedback"),
    ("POST", "/v2/models/{}/infer"),
    ("POST", "/v2/models/{}/versions/{}/infer"),
    ("POST", "/v1/streams/{}/records"),
}


def service_names() -> list[str]:
    """Every service package with a ``service.build`` (new services are covered without editing this test)."""
    names = []
    for module in pkgutil.iter_modules(driftloop.services.__path__):
        if module.ispkg and (Path(driftloop.services.__path__[0]) / module.name / "service.py").exists():
            names.append(module.name)
    return sorted(names)


@pytest.fixture(scope="module")
def apps(broker: Any, schema_registry_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    home = tmp_path_factory.mktemp("security-home")
    settings = Settings(
        home=home,
        kafka={"bootstrap_servers": broker.bootstrap_servers, "session_timeout_ms": 2000},
        schema_registry={"url": schema_registry_url},
        security=SECURITY,
    )
    built: dict[str, tuple[Any, ServiceSpec]] = {}
    try:
        for name in service_names():
            runtime = make_runtime(name, settings)
            build: Callable[[Any], ServiceSpec] = import_module(f"driftloop.services.{name}.service").build
            spec = build(runtime)
            _add_health(spec.app, runtime, spec)  # as run() does
            built[name] = (runtime, spec)
        yield {name: spec.app for name, (_runtime, spec) in built.items()}
    finally:
        for runtime, spec in built.values():
            for hook in spec.on_stop:
                with contextlib.suppress(Exception):  # stopping the rest matters more
                    hook()
            runtime.bus.close()


def mutating_routes(app: Any) -> list[tuple[str, str, bool]]:
    """(method, path, declared public by its service) of every mutating API route, including those of included
    routers (which FastAPI keeps behind one entry of ``app.routes`` and resolves to effective routes)."""
    found = []
    for route in app.routes:
        routes = [route] if isinstance(route, APIRoute) else list(getattr(route, "effective_candidates", list)())
        for one in routes:
            marked = bool((one.openapi_extra or {}).get(PUBLIC_MARK))
            found.extend((method, one.path_format, marked) for method in sorted(set(one.methods) & MUTATING))
    return found


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "1", path)


def generic(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_every_mutating_endpoint_of_every_service_needs_an_admin_token(apps: dict) -> None:
    assert {"registry", "serving", "triggers", "training", "ingestion", "schemaregistry"} <= set(apps)
    checked: list[str] = []
    public_seen = set()
    for name, app in apps.items():
        client = TestClient(app)
        for method, path, marked_public in mutating_routes(app):
            url = concrete(path)
            where = f"{name}: {method} {path}"
            if marked_public or (method, generic(path)) in PUBLIC:
                public_seen.add((method, generic(path)))
                assert client.request(method, url, json={}).status_code not in (401, 403), where
                continue
            anonymous = client.request(method, url, json={})
            assert anonymous.status_code == 401, (where, anonymous.status_code, anonymous.text)
            assert anonymous.headers.get("www-authenticate") == "Bearer", where
            assert client.request(method, url, json={}, headers=UNKNOWN).status_code == 401, where
            as_reader = client.request(method, url, json={}, headers=READER)
            if (method, generic(path)) in LOOKUPS:  # they only read: a read token may
                assert as_reader.status_code not in (401, 403), (where, as_reader.status_code)
            else:
                assert as_reader.status_code == 403, (where, as_reader.status_code)
                assert "admin" in as_reader.json()["detail"], where
            assert client.request(method, url, json={}, headers=ADMIN).status_code not in (401, 403), where
            checked.append(where)
    # The endpoints the issue names are among them.
    for expected in (
        "registry: PUT /v1/models/{name}/aliases/{alias}",
        "registry: POST /v1/models/{name}/rollback",
        "registry: PATCH /v1/models/{name}/versions/{version}",
        "triggers: POST /v1/models/{name}/retrain",
        "schemaregistry: POST /subjects/{subject}/versions",
    ):
        assert expected in checked, (expected, checked)
    assert ("POST", "/v1/models/{}/predict") in public_seen
    # Reads stay open by default; health and metrics always.
    registry = TestClient(apps["registry"])
    assert registry.get("/v1/models").status_code == 200
    assert registry.get("/healthz").status_code == 200 and registry.get("/metrics").status_code == 200


def test_openapi_documents_the_bearer_scheme(apps: dict) -> None:
    schema = TestClient(apps["registry"]).get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
    paths = schema["paths"]
    for path, method in (
        ("/v1/models/{name}/aliases/{alias}", "put"),
        ("/v1/models/{name}/rollback", "post"),
        ("/v1/models/{name}/versions/{version}", "patch"),
    ):
        operation = paths[path][method]
        assert operation["security"] == [{"BearerToken": []}] and operation["description"], (path, method)


def test_protected_reads_need_a_read_or_admin_token(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str
) -> None:
    from driftloop.services.registry.service import build

    settings = make_settings(security={**SECURITY, "protect_reads": True})
    runtime = make_runtime("registry", settings)
    try:
        client = TestClient(build(runtime).app)
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers=UNKNOWN).status_code == 401
        assert client.get("/v1/models", headers=READER).status_code == 200
        assert client.get("/v1/models", headers=ADMIN).status_code == 200
        assert client.get("/metrics").status_code == 200
    finally:
        runtime.bus.close()


@pytest.fixture
def secured_stack(make_settings: Callable[..., Settings], tmp_path: Path, unique: str) -> Iterator[Stack]:
    from model_factory import write_pipeline_dir

    model, stream = f"fraud-{unique}", f"tx-{unique}"
    pipelines = write_pipeline_dir(
        tmp_path / "pipelines", model, stream, first_version_threshold=0.6, min_improvement=0.01
    )
    s = Stack(make_settings(pipelines_dir=pipelines, security=SECURITY), model, stream)
    yield s
    s.stop()


def test_rollback_moves_serving_back_and_a_tampered_target_is_refused(secured_stack: Stack) -> None:
    stack = secured_stack
    registry = stack.registry.client
    stack.complete_training("run-1", rounds=1)
    assert stack.decided(1)["status"] == "promoted"
    # Serving checks each promotion against the registry: had v2 been promoted meanwhile, it would go straight to v2.
    wait_for(lambda: stack.served_version() == 1, "serving to load v1")
    stack.complete_training("run-2", rounds=30)
    assert stack.decided(2)["status"] == "promoted"
    wait_for(lambda: stack.served_version() == 2, "serving to switch to v2")

    # Moving another alias does not change what is served.
    response = registry.put(
        f"/v1/models/{stack.model}/aliases/challenger", json={"version": 1, "reason": "compare"}, headers=ADMIN
    )
    assert response.status_code == 200, response.text

    assert registry.post(f"/v1/models/{stack.model}/rollback", json={"reason": "v2 misbehaves"}).status_code == 401
    response = registry.post(f"/v1/models/{stack.model}/rollback", json={"reason": "v2 misbehaves"}, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert (response.json()["version"], response.json()["previous_version"]) == (1, 2)
    wait_for(lambda: stack.served_version() == 1, "serving to roll back to v1")
    answer = stack.predict(rows())  # predict is public: no token
    assert answer.status_code == 200 and answer.json()["version"] == 1
    alias = registry.get(f"/v1/models/{stack.model}/aliases/champion").json()
    assert (alias["version"], alias["moved_by"], alias["reason"]) == (1, "ops", "v2 misbehaves")
    promoted = [e.payload for e in stack.events("ModelPromoted")]
    assert [(p["alias"], p["version"], p["moved_by"], p["rollback"]) for p in promoted] == [
        ("champion", 1, "registry", False),
        ("champion", 2, "registry", False),
        ("challenger", 1, "ops", False),
        ("champion", 1, "ops", True),
    ]
    history = registry.get(f"/v1/models/{stack.model}/aliases/champion/history").json()["moves"]
    assert [(m["version"], m["previous_version"], m["moved_by"], m["rollback"]) for m in history] == [
        (1, 2, "ops", True),
        (2, 1, "registry", False),
        (1, None, "registry", False),
    ]
    switched = wait_for(lambda: (e := stack.events("ServingSwitched")) and len(e) == 3 and e, "ServingSwitched x3")
    assert [e.payload["version"] for e in switched] == [1, 2, 1]

    # v2's artifact is altered in the store: moving champion back to it is refused by serving, v1 keeps serving.
    v2 = registry.get(f"/v1/models/{stack.model}/versions/2").json()
    key = stack.store.key_of(v2["artifact_uri"])
    stack.store.put_bytes(key, stack.store.get_bytes(key) + b"\x00tampered")
    response = registry.put(
        f"/v1/models/{stack.model}/aliases/champion", json={"version": 2, "reason": "forward again"}, headers=ADMIN
    )
    assert response.status_code == 200
    described = wait_for(
        lambda: (d := stack.serving.client.get(f"/v1/models/{stack.model}").json()).get("last_refused") and d,
        "serving to refuse the tampered v2",
    )
    assert described["version"] == 1 and described["last_refused"]["version"] == 2
    assert "sha256" in described["last_refused"]["reason"]
    assert stack.predict(rows()).json()["version"] == 1


def test_processes_use_the_generated_token_of_their_home(
    broker: Any, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    """As after `driftloop up`: no token in the settings, only <home>/admin.token. A secured schema registry
    process accepts the registry process's schema registrations (bearer from the file), and both refuse
    anonymous writes."""
    from driftloop.clients.credentials import auth_headers, ensure_admin_token
    from driftloop.contracts.settings import settings_env
    from driftloop.ops.procs import free_port, http_ready, spawn, stop_pid, wait_until

    ports = {"schemaregistry_port": free_port(), "registry_port": free_port()}
    settings = make_settings(
        services=ports, schema_registry={"url": f"http://127.0.0.1:{ports['schemaregistry_port']}"}
    )
    ensure_admin_token(settings)
    headers = auth_headers(settings)
    assert headers and not settings.security.admin_tokens
    procs = []
    try:
        for name in ("schemaregistry", "registry"):
            url = settings.services.url(name)
            procs.append(
                spawn(
                    [sys.executable, "-m", f"driftloop.services.{name}"],
                    tmp_path / f"{name}.out",
                    settings_env(settings),
                )
            )
            wait_until(lambda url=url: http_ready(f"{url}/healthz"), 90, f"the {name} process")
        schemas = settings.services.url("schemaregistry")
        # The registry process registered every event schema through the bearer token it read from <home>.
        assert "driftloop.models.promoted-value" in httpx.get(f"{schemas}/subjects").json()
        body = {"schema": '{"type": "string"}'}
        assert httpx.post(f"{schemas}/subjects/probe-value/versions", json=body).status_code == 401
        assert httpx.post(f"{schemas}/subjects/probe-value/versions", json=body, headers=headers).status_code == 200
        registry = settings.services.url("registry")
        move = {"version": 1, "reason": "probe"}
        assert httpx.put(f"{registry}/v1/models/nobody/aliases/champion", json=move).status_code == 401
        assert httpx.put(f"{registry}/v1/models/nobody/aliases/champion", json=move, headers=headers).status_code == 404
    finally:
        for proc in procs:
            stop_pid(proc.pid)
