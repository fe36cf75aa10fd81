"""Errors carry their HTTP status: on every service's app, a route that raises an error of the tree answers with
the error's status and code (the schema registry's own errors in Confluent's shape), and the services' routes are
the module-level routers, with the same OpenAPI paths as before they were."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import driftloop.contracts
from driftloop import errors
from driftloop.contracts.settings import Settings
from driftloop.errors import DriftloopError, ServiceError, ValidationFailed, WireFormatError, http_status_of
from driftloop.runtime.service import base_app

CONTRACTS_DIR = Path(driftloop.contracts.__file__).parent
SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"
SERVICES = sorted(p.name for p in SERVICES_DIR.iterdir() if (p / "__init__.py").is_file())
APIS = {name: importlib.import_module(f"driftloop.services.{name}.api") for name in SERVICES}
# Every module of every service (and the contracts), so that every error class they define is in ``tree()``.
MODULES = [
    importlib.import_module(f"driftloop.services.{path.parent.name}.{path.stem}")
    for path in sorted(SERVICES_DIR.glob("*/*.py"))
    if path.stem not in ("__init__", "__main__")
] + [importlib.import_module(f"driftloop.contracts.{path.stem}") for path in sorted(CONTRACTS_DIR.glob("*.py"))]
# A route of each service that reads its context (what a raising context makes it raise).
PROBE = {
    "dashboard": "/v1/timeline/m",
    "features": "/v1/features",
    "ingestion": "/v1/streams",
    "monitor": "/v1/monitor/m",
    "registry": "/v1/models",
    "schemaregistry": "/subjects",
    "serving": "/v1/models",
    "training": "/v1/runs",
    "triggers": "/v1/models/m/trigger-state",
}

# The (method, path) of every service's OpenAPI, as they were when each api.py was one router(...) closure.
OPENAPI_PATHS: dict[str, set[tuple[str, str]]] = {
    "dashboard": {("GET", "/v1/timeline/{model}")},
    "features": {("GET", "/v1/features"), ("POST", "/v1/features/online")},
    "ingestion": {
        ("GET", "/v1/datasets/{dataset_version_id}"),
        ("GET", "/v1/streams"),
        ("GET", "/v1/streams/{stream}/datasets"),
        ("GET", "/v1/streams/{stream}/datasets/diff"),
        ("GET", "/v1/streams/{stream}/dead-letters"),
        ("GET", "/v1/streams/{stream}/schema"),
        ("GET", "/v1/streams/{stream}/stats"),
        ("POST", "/v1/streams/{stream}/datasets"),
        ("POST", "/v1/streams/{stream}/datasets/compact"),
        ("POST", "/v1/streams/{stream}/dead-letters/replay"),
        ("POST", "/v1/streams/{stream}/records"),
    },
    "monitor": {
        ("GET", "/v1/monitor/{model}"),
        ("GET", "/v1/monitor/{model}/drift"),
        ("GET", "/v1/monitor/{model}/performance"),
        ("GET", "/v1/monitor/{model}/quality"),
    },
    "registry": {
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{name}/aliases"),
        ("GET", "/v1/models/{name}/aliases/{alias}"),
        ("GET", "/v1/models/{name}/aliases/{alias}/history"),
        ("GET", "/v1/models/{name}/versions"),
        ("GET", "/v1/models/{name}/versions/{version}"),
        ("PATCH", "/v1/models/{name}/versions/{version}"),
        ("POST", "/v1/models/{name}/rollback"),
        ("PUT", "/v1/models/{name}/aliases/{alias}"),
    },
    "schemaregistry": {
        ("DELETE", "/config/{subject}"),
        ("DELETE", "/subjects/{subject}"),
        ("DELETE", "/subjects/{subject}/versions/{version}"),
        ("GET", "/"),
        ("GET", "/config"),
        ("GET", "/config/{subject}"),
        ("GET", "/schemas/ids/{schema_id}"),
        ("GET", "/schemas/ids/{schema_id}/schema"),
        ("GET", "/schemas/ids/{schema_id}/subjects"),
        ("GET", "/schemas/ids/{schema_id}/versions"),
        ("GET", "/schemas/types"),
        ("GET", "/subjects"),
        ("GET", "/subjects/{subject}/versions"),
        ("GET", "/subjects/{subject}/versions/{version}"),
        ("GET", "/subjects/{subject}/versions/{version}/schema"),
        ("POST", "/compatibility/subjects/{subject}/versions"),
        ("POST", "/compatibility/subjects/{subject}/versions/{version}"),
        ("POST", "/subjects/{subject}"),
        ("POST", "/subjects/{subject}/versions"),
        ("PUT", "/config"),
        ("PUT", "/config/{subject}"),
    },
    "serving": {
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{name}"),
        ("GET", "/v1/models/{name}/feedback"),
        ("GET", "/v2"),
        ("GET", "/v2/health/live"),
        ("GET", "/v2/health/ready"),
        ("GET", "/v2/models/{name}"),
        ("GET", "/v2/models/{name}/ready"),
        ("POST", "/v1/models/{name}/feedback"),
        ("POST", "/v1/models/{name}/predict"),
        ("POST", "/v2/models/{name}/infer"),
        ("GET", "/v2/models/{name}/versions/{version}"),
        ("GET", "/v2/models/{name}/versions/{version}/ready"),
        ("POST", "/v2/models/{name}/versions/{version}/infer"),
    },
    "training": {
        ("GET", "/v1/runs"),
        ("GET", "/v1/runs/{run_id}"),
        ("GET", "/v1/runs/{run_id}/logs"),
        ("POST", "/v1/runs/{run_id}/abort"),
        ("POST", "/v1/runs/{run_id}/rerun"),
    },
    "triggers": {
        ("GET", "/v1/models/{name}/requests"),
        ("GET", "/v1/models/{name}/trigger-state"),
        ("POST", "/v1/models/{name}/retrain"),
    },
}

# What today's routes answer with these errors (the statuses clients and tests rely on).
EXPECTED: dict[str, tuple[int, str]] = {
    "ConfigError": (400, "invalid_config"),
    "BadRequest": (400, "bad_request"),
    "AuthenticationRequired": (401, "unauthenticated"),
    "PermissionDenied": (403, "forbidden"),
    "NotFoundError": (404, "not_found"),
    "ConflictError": (409, "conflict"),
    "PayloadTooLarge": (413, "payload_too_large"),
    "InvalidRequest": (422, "invalid_request"),
    "ServiceUnavailable": (503, "unavailable"),
    "OnlineStoreUnavailable": (503, "online_store_unavailable"),
    "AliasConflict": (409, "alias_conflict"),
    "RollbackImpossible": (409, "rollback_impossible"),
    "EventNotSent": (503, "event_not_sent"),
    "RetrainConflict": (409, "retrain_conflict"),
    "NoNewData": (409, "no_new_data"),
    "IdempotencyKeyReused": (422, "idempotency_key_reused"),
    "SubjectNotFound": (404, "subject_not_found"),
    "IncompatibleSchema": (409, "incompatible_schema"),
    "InvalidSchema": (422, "invalid_schema"),
}
# The schema registry's errors answer with Confluent's error_code (the stock client reads it).
CONFLUENT_CODES = {
    "SubjectNotFound": 40401,
    "VersionNotFound": 40402,
    "SchemaNotFound": 40403,
    "SubjectCompatibilityNotFound": 40408,
    "IncompatibleSchema": 409,
    "InvalidSchema": 42201,
    "InvalidVersion": 42202,
    "InvalidCompatibilityLevel": 42203,
    "RegistryStoreError": 50001,
    "RegistryError": 50001,
}


def tree() -> list[type[DriftloopError]]:
    found, todo = [], [DriftloopError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(set(found), key=lambda c: f"{c.__module__}.{c.__qualname__}")


def owner(cls: type[DriftloopError]) -> str | None:
    """The service that defines ``cls``; None for the errors of libs, which any service may raise."""
    parts = cls.__module__.split(".")
    return parts[2] if parts[:2] == ["driftloop", "services"] else None


def instance(cls: type[DriftloopError]) -> DriftloopError:
    if issubclass(cls, ValidationFailed):
        return cls("out_of_range", "amount", "instances[0].amount is out of range")
    if issubclass(cls, WireFormatError):
        return cls("bad_magic_byte", "not the Confluent wire format")
    if issubclass(cls, ServiceError):
        return cls("not configured on this replica", status_code=501)
    return cls(f"{cls.__name__} raised by the route")


class RaisingContext:
    """A route's context whose every attribute raises ``error``: the route raises it as its own."""

    def __init__(self, error: DriftloopError) -> None:
        self._error = error

    def __getattr__(self, name: str) -> Any:
        raise self._error


def service_app(service: str, tmp_path: Path) -> FastAPI:
    """The app as the service's ``build`` wires it: base app, its module-level router, its context."""
    settings = Settings(home=tmp_path, security={"enabled": False})
    runtime = SimpleNamespace(name=service, settings=settings, Session=None)
    if service == "schemaregistry":  # its build is cheap: the real wiring, with its error handler
        from driftloop.services.schemaregistry.service import build

        return build(runtime).app  # type: ignore[arg-type]
    app = base_app(runtime, service)  # type: ignore[arg-type]
    app.include_router(APIS[service].router)
    return app


def cases() -> list[tuple[str, type[DriftloopError]]]:
    return [(service, cls) for service in SERVICES for cls in tree() if owner(cls) in (None, service)]


def test_every_error_a_service_defines_is_in_the_tree() -> None:
    for module in MODULES:
        for name, cls in vars(module).items():
            if isinstance(cls, type) and issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                # A private exception never leaves its module (e.g. ingestion's _Malformed, caught where raised).
                assert name.startswith("_") or issubclass(cls, DriftloopError), f"{module.__name__}.{name}"


def test_every_service_error_is_in_the_tree_with_a_stable_code() -> None:
    names = {cls.__name__ for cls in tree()}
    assert set(EXPECTED) <= names and set(CONFLUENT_CODES) <= names
    for cls in tree():
        assert cls.default_code and cls.default_code.islower(), cls
        assert owner(cls) is None or owner(cls) in SERVICES, cls
    # Defined once, in the tree: features and serving share it.
    assert errors.OnlineStoreUnavailable.__module__ == "driftloop.errors"


@pytest.mark.parametrize(("service", "cls"), cases(), ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_a_route_raising_an_error_answers_its_status_and_code(
    service: str, cls: type[DriftloopError], tmp_path: Path
) -> None:
    error = instance(cls)
    app = service_app(service, tmp_path)
    app.state.context = RaisingContext(error)
    response = TestClient(app).get(PROBE[service])

    assert response.status_code == http_status_of(error)
    if cls.__name__ in EXPECTED:
        assert (response.status_code, error.code) == EXPECTED[cls.__name__]
    body = response.json()
    if service == "schemaregistry" and cls.__name__ in CONFLUENT_CODES:
        assert body == {"error_code": CONFLUENT_CODES[cls.__name__], "message": str(error)}
        return
    assert body == {"detail": error.detail, "code": error.code}
    if isinstance(error, ValidationFailed):  # serving's 422 body, kept for every service
        assert body["detail"] == {"reason": "out_of_range", "field": "amount", "message": str(error)}
    if isinstance(error, errors.AuthenticationRequired):
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("service", SERVICES)
def test_openapi_lists_the_same_paths_as_before(service: str, tmp_path: Path) -> None:
    paths = service_app(service, tmp_path).openapi()["paths"]
    assert {(method.upper(), path) for path, ops in paths.items() for method in ops} == OPENAPI_PATHS[service]


def test_routes_raise_the_tree_errors_themselves(tmp_path: Path) -> None:
    """No route maps an error to a status: the errors the routes raise answer with their own."""
    from driftloop.services.ingestion.handlers import MAX_BATCH_RECORDS
    from driftloop.services.triggers.handlers import RetrainConflict

    class Handlers:
        def request_manual(self, name: str, reason: str, dataset_version_id: str | None) -> dict[str, Any]:
            raise RetrainConflict(f"model {name!r}: stream 'tx' has no materialized dataset version yet")

    triggers = service_app("triggers", tmp_path)
    triggers.state.context = APIS["triggers"].Context(Handlers())  # type: ignore[arg-type]
    answer = TestClient(triggers).post("/v1/models/m/retrain")
    assert answer.status_code == 409 and answer.json()["code"] == "retrain_conflict"
    assert "no materialized dataset version" in answer.json()["detail"]

    ingestion = service_app("ingestion", tmp_path)
    ingestion.state.context = APIS["ingestion"].Context(
        {"m": SimpleNamespace(stream=SimpleNamespace(name="tx"))},  # type: ignore[dict-item]
        lander=None,  # type: ignore[arg-type]
        intake=None,  # type: ignore[arg-type]
        cutter=None,  # type: ignore[arg-type]
    )
    http = TestClient(ingestion)
    not_json = http.post("/v1/streams/tx/records", content=b"{records")
    assert not_json.status_code == 422 and not_json.json()["code"] == "invalid_request"
    too_many = http.post("/v1/streams/tx/records", json={"records": [{}] * (MAX_BATCH_RECORDS + 1)})
    assert too_many.status_code == 413 and too_many.json()["code"] == "payload_too_large"
    unknown = http.post("/v1/streams/nope/records", json={"records": []})
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
