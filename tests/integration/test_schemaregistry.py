"""Our schema registry against the stock confluent_kafka client, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from driftloop.contracts.settings import Settings, settings_env
from driftloop.ops.procs import free_port, http_ready, spawn, stop_pid, wait_until

pytestmark = pytest.mark.integration

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"

V1 = {
    "type": "record",
    "name": "Payment",
    "namespace": "test",
    "fields": [{"name": "id", "type": "string"}, {"name": "amount", "type": "double"}],
}
V2_COMPATIBLE = {**V1, "fields": [*V1["fields"], {"name": "currency", "type": "string", "default": "EUR"}]}
V2_INCOMPATIBLE = {**V1, "fields": [*V1["fields"], {"name": "country", "type": "string"}]}


@pytest.fixture(scope="module")
def postgres_registry_url(postgres_url: str, session_dir: Path) -> Iterator[str]:
    port = free_port()
    env = settings_env(Settings(home=session_dir / "pg-registry", pipelines_dir=PIPELINES))
    env["DRIFTLOOP_DATABASE__URL"] = postgres_url
    env["DRIFTLOOP_SERVICES__SCHEMAREGISTRY_PORT"] = str(port)
    proc = spawn([sys.executable, "-m", "driftloop.services.schemaregistry"], session_dir / "pg-registry.out", env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ready(f"{url}/healthz"), 60, "the PostgreSQL-backed schema registry")
        yield url
    finally:
        stop_pid(proc.pid)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return request.getfixturevalue("schema_registry_url")
    return request.getfixturevalue("postgres_registry_url")


def test_register_lookup_and_versions_with_the_stock_client(registry_url: str, unique: str) -> None:
    client = SchemaRegistryClient({"url": registry_url})
    subject = f"payments-{unique}-value"
    schema_id = client.register_schema(subject, Schema(json.dumps(V1), "AVRO"))
    assert client.register_schema(subject, Schema(json.dumps(V1), "AVRO")) == schema_id  # idempotent

    fresh = SchemaRegistryClient({"url": registry_url})  # no cache: every answer comes from the server
    assert json.loads(fresh.get_schema(schema_id).schema_str) == V1
    assert subject in fresh.get_subjects()
    latest = fresh.get_latest_version(subject)
    assert (latest.version, latest.schema_id) == (1, schema_id)
    found = fresh.lookup_schema(subject, Schema(json.dumps(V1), "AVRO"))
    assert found.schema_id == schema_id and found.version == 1

    v2_id = fresh.register_schema(subject, Schema(json.dumps(V2_COMPATIBLE), "AVRO"))
    assert v2_id != schema_id
    assert fresh.get_versions(subject) == [1, 2]
    assert fresh.get_version(subject, 1).schema_id == schema_id


def test_incompatible_schema_is_refused_with_409_and_the_reason(registry_url: str, unique: str) -> None:
    client = SchemaRegistryClient({"url": registry_url})
    subject = f"payments-{unique}-value"
    client.register_schema(subject, Schema(json.dumps(V1), "AVRO"))
    assert client.test_compatibility(subject, Schema(json.dumps(V2_COMPATIBLE), "AVRO")) is True
    assert client.test_compatibility(subject, Schema(json.dumps(V2_INCOMPATIBLE), "AVRO")) is False
    with pytest.raises(SchemaRegistryError) as err:
        client.register_schema(subject, Schema(json.dumps(V2_INCOMPATIBLE), "AVRO"))
    assert err.value.http_status_code == 409
    assert "country" in err.value.error_message


def test_compatibility_levels_per_subject_and_global(registry_url: str, unique: str) -> None:
    client = SchemaRegistryClient({"url": registry_url})
    subject = f"levels-{unique}-value"
    assert client.get_compatibility() in {"BACKWARD", "NONE", "FORWARD", "FULL"}
    client.register_schema(subject, Schema(json.dumps(V1), "AVRO"))
    client.set_compatibility(subject_name=subject, level="NONE")
    assert client.get_compatibility(subject) == "NONE"
    # NONE lets the otherwise incompatible change through.
    client.register_schema(subject, Schema(json.dumps(V2_INCOMPATIBLE), "AVRO"))
    client.set_compatibility(subject_name=subject, level="FORWARD")
    assert client.get_compatibility(subject) == "FORWARD"
    with pytest.raises(SchemaRegistryError) as err:
        client.set_compatibility(subject_name=subject, level="SIDEWAYS")
    assert err.value.http_status_code == 422


def test_stock_avro_serializer_round_trip(registry_url: str, unique: str) -> None:
    client = SchemaRegistryClient({"url": registry_url})
    topic = f"payments-{unique}"
    serializer = AvroSerializer(client, json.dumps(V1))
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    ctx = SerializationContext(topic, MessageField.VALUE)
    payload = serializer({"id": "p-1", "amount": 12.5}, ctx)
    assert payload[0] == 0  # Confluent magic byte
    assert deserializer(payload, ctx) == {"id": "p-1", "amount": 12.5}


def test_errors_have_confluent_codes(registry_url: str, unique: str) -> None:
    r = httpx.get(f"{registry_url}/subjects/nope-{unique}/versions")
    assert r.status_code == 404 and r.json()["error_code"] == 40401
    r = httpx.get(f"{registry_url}/schemas/ids/999999")
    assert r.status_code == 404 and r.json()["error_code"] == 40403
    r = httpx.post(f"{registry_url}/subjects/bad-{unique}/versions", json={"schema": '{"type": "recordx"}'})
    assert r.status_code == 422 and r.json()["error_code"] == 42201
