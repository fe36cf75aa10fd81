"""Which token scope may call which route, for every route of every service, generated from each service's OpenAPI
(so a route added later is covered without editing this test): 401 without a token or with an unknown one, 403 with
a token whose scope does not allow the call, neither with one that does. The expected rights are written out here,
apart from ``driftloop.runtime.security``'s own table; a mutating route not named below is for admin only."""

from __future__ import annotations

import pkgutil
import re
from importlib import import_module
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

import driftloop.services
from driftloop.contracts.pipeline import load_pipelines
from driftloop.contracts.settings import Settings
from driftloop.runtime.service import base_app

PIPELINES_DIR = Path(__file__).resolve().parents[2] / "pipelines"
TOKENS = {
    "admin": "scope-admin-token",
    "read": "scope-read-token",
    "producer": "scope-producer-token",
    "serving": "scope-serving-token",
}
SECURITY: dict[str, Any] = {
    "admin_tokens": {"ops": TOKENS["admin"]},
    "read_tokens": {"grafana": TOKENS["read"]},
    "producer_tokens": {"app": TOKENS["producer"]},
    "serving_tokens": {"web": TOKENS["serving"]},
}
# What a token of each scope may call besides reads (written out here, not read from the module under test).
LOOKUPS = {
    "POST /v1/features/online",
    "POST /subjects/{}",
    "POST /compatibility/subjects/{}/versions",
    "POST /compatibility/subjects/{}/versions/{}",
}
EXPECTED_MUTATING = {
    "read": LOOKUPS,
    "producer": LOOKUPS | {"POST /v1/streams/{}/records", "POST /subjects/{}/versions"},
    "serving": LOOKUPS | {"POST /v1/models/{}/predict", "POST /v1/models/{}/feedback", "POST /v2/models/{}/infer"},
}
DATA_PLANE = {"POST /v1/models/{}/predict", "POST /v1/models/{}/feedback", "POST /v2/models/{}/infer"}
DATA_PLANE |= {"POST /v1/streams/{}/records", "POST /v2/models/{}/versions/{}/infer"}
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
# A valid value per path parameter name (a stream and a model of the demo pipeline, a version number, ...).
PARAM_VALUES = {"version": "1", "schema_id": "1", "stream": "transactions", "name": "fraud-detector"}


def service_names() -> list[str]:
    root = Path(driftloop.services.__path__[0])
    return sorted(
        m.name for m in pkgutil.iter_modules(driftloop.services.__path__) if (root / m.name / "api.py").exists()
    )


def app_of(service: str, security: dict[str, Any]) -> TestClient:
    """The service's routes behind ``base_app`` as its ``build`` sets them up (``base_app`` + ``api.router``),
    without the context: a call the guard lets through fails in the route (500), never with 401/403."""
    settings = Settings(home=Path("/nonexistent-driftloop-home"), pipelines_dir=PIPELINES_DIR, security=security)
    runtime = SimpleNamespace(name=service, settings=settings, pipelines=load_pipelines(PIPELINES_DIR))
    app = base_app(runtime, service)  # type: ignore[arg-type]
    app.include_router(import_module(f"driftloop.services.{service}.api").router)
    return TestClient(app, raise_server_exceptions=False)


def operations(client: TestClient) -> list[tuple[str, str, str]]:
    """(method, concrete url, route key) of every operation in the app's OpenAPI."""
    found = []
    for path, item in client.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        url = re.sub(r"\{([^}]*)\}", lambda m: PARAM_VALUES.get(m.group(1), "fraud-detector"), path)
        key_path = re.sub(r"\{[^}]*\}", "{}", path)
        for method in item:
            if method.upper() in {"GET", "POST", "PUT", "PATCH", "DELETE"}:
                found.append((method.upper(), url, f"{method.upper()} {key_path}"))
    return found


def test_every_service_has_routes() -> None:
    assert {"ingestion", "registry", "serving", "schemaregistry", "features", "training", "triggers"} <= set(
        service_names()
    )


@pytest.mark.parametrize("service", service_names())
def test_every_route_answers_401_403_or_through_by_scope(service: str) -> None:
    client = app_of(service, {**SECURITY, "protect_reads": True, "public_routes": []})
    ops = operations(client)
    assert ops, f"{service}: no route in its OpenAPI"
    for method, url, key in ops:
        where = f"{service}: {key}"
        # Malformed JSON without a token: the token is checked first.
        anonymous = client.request(method, url, content=b"{not json", headers={"content-type": "application/json"})
        assert anonymous.status_code == 401, where
        assert anonymous.headers["www-authenticate"] == "Bearer", where
        unknown = client.request(method, url, headers={"Authorization": "Bearer not-a-known-token"})
        assert unknown.status_code == 401, where
        for scope, token in TOKENS.items():
            answer = client.request(method, url, json={}, headers={"Authorization": f"Bearer {token}"})
            allowed = scope == "admin" or method not in MUTATING or key in EXPECTED_MUTATING[scope]
            if allowed:
                assert answer.status_code not in (401, 403), f"{where} with a {scope} token: {answer.text}"
            else:
                assert answer.status_code == 403, f"{where} with a {scope} token: {answer.status_code}"
                assert scope in answer.json()["detail"], where


@pytest.mark.parametrize("service", service_names())
def test_default_settings_open_reads_and_the_data_plane_only(service: str) -> None:
    client = app_of(service, SECURITY)
    for method, url, key in operations(client):
        answer = client.request(method, url, json={})
        if method in MUTATING and key not in DATA_PLANE:
            assert answer.status_code == 401, f"{service}: {key}"
        else:
            assert answer.status_code not in (401, 403), f"{service}: {key}"


def test_every_scoped_route_exists_in_some_service() -> None:
    """The rights above name real routes (a renamed route would otherwise silently become admin-only)."""
    keys = {key for service in service_names() for _m, _u, key in operations(app_of(service, SECURITY))}
    for scope, routes in EXPECTED_MUTATING.items():
        assert routes <= keys, f"{scope}: {sorted(routes - keys)}"


def test_restricted_producer_and_serving_tokens_stay_within_their_streams_and_models() -> None:
    security = {
        **SECURITY,
        "public_routes": [],
        "token_streams": {"app": ["transactions"]},
        "token_models": {"web": ["fraud-detector"]},
    }
    producer = {"Authorization": f"Bearer {TOKENS['producer']}"}
    serving = {"Authorization": f"Bearer {TOKENS['serving']}"}
    ingestion = app_of("ingestion", security)
    assert ingestion.post("/v1/streams/transactions/records", json={}, headers=producer).status_code not in (401, 403)
    refused = ingestion.post("/v1/streams/payments/records", json={}, headers=producer)
    assert refused.status_code == 403 and "payments" in refused.json()["detail"]

    registry = app_of("schemaregistry", security)
    topic = load_pipelines(PIPELINES_DIR)["fraud-detector"].stream.topic
    own = registry.post(f"/subjects/{topic}-value/versions", json={"schema": '"string"'}, headers=producer)
    assert own.status_code == 200 or own.status_code not in (401, 403)
    assert registry.post("/subjects/payments-value/versions", json={}, headers=producer).status_code == 403
    # Lookups stay open to the producer whatever the subject.
    assert registry.post("/subjects/payments-value", json={}, headers=producer).status_code not in (401, 403)

    serving_app = app_of("serving", security)
    assert serving_app.post("/v1/models/fraud-detector/predict", json={}, headers=serving).status_code != 403
    assert serving_app.post("/v1/models/other/predict", json={}, headers=serving).status_code == 403
    assert serving_app.post("/v2/models/other/infer", json={}, headers=serving).status_code == 403


def test_restrictions_must_name_tokens_of_their_kind() -> None:
    from driftloop.contracts.settings import load_settings
    from driftloop.errors import ConfigError

    with pytest.raises(ConfigError, match=r"token_streams.*'grafana'.*producer_tokens"):
        load_settings(security={**SECURITY, "token_streams": {"grafana": ["transactions"]}})


def test_a_stock_confluent_producer_registers_its_streams_schema_with_a_producer_token(tmp_path: Path) -> None:
    """confluent_kafka's AvroSerializer (auto-registration) against the schema registry service on a real server:
    a producer token registers under its stream's subject; outside its streams, or with a read token, 403."""
    import json
    import threading

    import uvicorn
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.schema_registry.error import SchemaRegistryError
    from confluent_kafka.serialization import MessageField, SerializationContext

    from driftloop.clients.credentials import schema_registry_client_config
    from driftloop.ops.procs import free_port, http_ready, wait_until
    from driftloop.runtime.service import make_runtime, server_config
    from driftloop.services.schemaregistry.service import build

    port = free_port()
    settings = Settings(
        home=tmp_path,
        pipelines_dir=PIPELINES_DIR,
        services={"schemaregistry_port": port},
        schema_registry={"url": f"http://127.0.0.1:{port}"},
        security={**SECURITY, "token_streams": {"app": ["transactions"]}},
    )
    runtime = make_runtime("schemaregistry", settings)
    server = uvicorn.Server(server_config(build(runtime).app, settings, "schemaregistry"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: http_ready(f"http://127.0.0.1:{port}/schemas/types"), 30, "the schema registry")
        stream = load_pipelines(PIPELINES_DIR)["fraud-detector"].stream
        schema = json.dumps(stream.avro_schema())
        row = {"customer_id": "c1", "event_time": 1_700_000_000_000, "amount": 1.0}

        def serialize(token: str, topic: str) -> bytes:
            client = SchemaRegistryClient(schema_registry_client_config(settings, token=token))
            serializer = AvroSerializer(client, schema, conf={"auto.register.schemas": True})
            return serializer(row, SerializationContext(topic, MessageField.VALUE))

        wire = serialize(TOKENS["producer"], stream.topic)
        assert wire[0] == 0  # Confluent wire format: magic byte, schema id, Avro body
        for token, topic in ((TOKENS["producer"], "other-topic"), (TOKENS["read"], stream.topic + "-2")):
            with pytest.raises(SchemaRegistryError) as refused:
                serialize(token, topic)
            assert refused.value.http_status_code == 403
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        runtime.bus.close()
