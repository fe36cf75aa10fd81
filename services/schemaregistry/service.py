from __future__ import annotations

from driftloop.runtime.service import Runtime, ServiceSpec, base_app

from .api import registry_error_handler, router
from .store import RegistryError, SchemaStore


def build(runtime: Runtime) -> ServiceSpec:
    store = SchemaStore(runtime.Session, default_compatibility=runtime.settings.schema_registry.default_compatibility)
    app = base_app(runtime, "schema registry", "Confluent Schema Registry REST API (Avro).")
    app.add_exception_handler(RegistryError, registry_error_handler)
    app.include_router(router(store))
    return ServiceSpec(app=app)
