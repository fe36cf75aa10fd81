"""Wiring of the schema registry service."""

from __future__ import annotations

from driftloop.runtime.service import Runtime, ServiceSpec, base_app

from . import api
from .errors import RegistryError
from .store import SchemaStore


def build(runtime: Runtime) -> ServiceSpec:
    store = SchemaStore(runtime.Session, default_compatibility=runtime.settings.schema_registry.default_compatibility)
    app = base_app(runtime, "schema registry", "Confluent Schema Registry REST API (Avro).")
    # Its own errors in Confluent's shape; every other error of the tree gets the base answer.
    app.add_exception_handler(RegistryError, api.registry_error_response)
    app.state.context = api.Context(store)
    app.include_router(api.router)
    return ServiceSpec(app=app)
