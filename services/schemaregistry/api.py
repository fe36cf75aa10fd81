"""The Confluent Schema Registry REST API (the part that Avro clients use), errors in Confluent's shape."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .store import RegistryError, SchemaStore

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"


async def _schema_body(request: Request) -> str:
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError as exc:
        raise RegistryError(422, 42201, f"request body is not JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
        raise RegistryError(422, 42201, 'request body must be {"schema": "<schema as a JSON string>"}')
    schema_type = body.get("schemaType", "AVRO") or "AVRO"
    if schema_type != "AVRO":
        raise RegistryError(422, 42201, f"schemaType {schema_type!r} is not supported here: only AVRO")
    if body.get("references"):
        raise RegistryError(422, 42201, "schema references are not supported: register self-contained schemas")
    return body["schema"]


async def _level_body(request: Request) -> str:
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError as exc:
        raise RegistryError(422, 42203, f"request body is not JSON: {exc}") from exc
    level = body.get("compatibility") or body.get("compatibilityLevel") if isinstance(body, dict) else None
    if not isinstance(level, str):
        raise RegistryError(422, 42203, 'request body must be {"compatibility": "BACKWARD"} (or another level)')
    return level


def _flag(value: str | None) -> bool:
    return str(value).lower() == "true"


class RegistryResponse(JSONResponse):
    media_type = MEDIA_TYPE


async def registry_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RegistryError)
    return RegistryResponse(status_code=exc.status, content={"error_code": exc.error_code, "message": exc.message})


def router(store: SchemaStore) -> APIRouter:
    api = APIRouter(tags=["schema registry"], default_response_class=RegistryResponse)

    @api.get("/")
    def root() -> dict[str, Any]:
        return {}

    @api.get("/schemas/types")
    def schema_types() -> list[str]:
        return ["AVRO"]

    @api.get("/schemas/ids/{schema_id}")
    def get_schema(schema_id: int) -> dict[str, Any]:
        return {"schema": store.schema_by_id(schema_id)}

    @api.get("/schemas/ids/{schema_id}/schema")
    def get_raw_schema(schema_id: int) -> Any:
        return json.loads(store.schema_by_id(schema_id))

    @api.get("/schemas/ids/{schema_id}/subjects")
    def get_schema_subjects(schema_id: int) -> list[str]:
        return sorted({sv.subject for sv in store.subjects_of(schema_id)})

    @api.get("/schemas/ids/{schema_id}/versions")
    def get_schema_versions(schema_id: int) -> list[dict[str, Any]]:
        return [{"subject": sv.subject, "version": sv.version} for sv in store.subjects_of(schema_id)]

    @api.get("/subjects")
    def list_subjects(deleted: str | None = None) -> list[str]:
        return store.subjects(include_deleted=_flag(deleted))

    @api.get("/subjects/{subject}/versions")
    def list_versions(subject: str) -> list[int]:
        return store.versions(subject)

    @api.get("/subjects/{subject}/versions/{version}")
    def get_version(subject: str, version: str) -> dict[str, Any]:
        sv = store.get_version(subject, version)
        return {"subject": sv.subject, "version": sv.version, "id": sv.schema_id, "schema": sv.schema}

    @api.get("/subjects/{subject}/versions/{version}/schema")
    def get_version_schema(subject: str, version: str) -> Any:
        return json.loads(store.get_version(subject, version).schema)

    @api.post("/subjects/{subject}/versions")
    async def register(subject: str, request: Request) -> dict[str, Any]:
        schema_text = await _schema_body(request)
        schema_id = store.register(subject, schema_text)
        sv = store.lookup(subject, schema_text)
        return {"id": schema_id, "subject": subject, "version": sv.version, "schema": sv.schema}

    @api.post("/subjects/{subject}")
    async def lookup(subject: str, request: Request) -> dict[str, Any]:
        sv = store.lookup(subject, await _schema_body(request))
        return {"subject": sv.subject, "version": sv.version, "id": sv.schema_id, "schema": sv.schema}

    @api.delete("/subjects/{subject}")
    def delete_subject(subject: str, permanent: str | None = None) -> list[int]:
        return store.delete_subject(subject, permanent=_flag(permanent))

    @api.delete("/subjects/{subject}/versions/{version}")
    def delete_version(subject: str, version: str, permanent: str | None = None) -> int:
        return store.delete_version(subject, version, permanent=_flag(permanent))

    @api.post("/compatibility/subjects/{subject}/versions/{version}")
    async def compatibility_one(subject: str, version: str, request: Request, verbose: str | None = None) -> Any:
        problems = store.test_compatibility(subject, await _schema_body(request), version)
        return {"is_compatible": not problems, **({"messages": problems} if _flag(verbose) else {})}

    @api.post("/compatibility/subjects/{subject}/versions")
    async def compatibility_all(subject: str, request: Request, verbose: str | None = None) -> Any:
        problems = store.test_compatibility(subject, await _schema_body(request), None)
        return {"is_compatible": not problems, **({"messages": problems} if _flag(verbose) else {})}

    @api.get("/config")
    def get_global_config() -> dict[str, Any]:
        return {"compatibilityLevel": store.get_compatibility(None)}

    @api.put("/config")
    async def put_global_config(request: Request) -> dict[str, Any]:
        return {"compatibility": store.set_compatibility(None, await _level_body(request))}

    @api.get("/config/{subject}")
    def get_subject_config(subject: str, defaultToGlobal: str | None = None) -> dict[str, Any]:
        return {"compatibilityLevel": store.get_compatibility(subject, default_to_global=_flag(defaultToGlobal))}

    @api.put("/config/{subject}")
    async def put_subject_config(subject: str, request: Request) -> dict[str, Any]:
        return {"compatibility": store.set_compatibility(subject, await _level_body(request))}

    @api.delete("/config/{subject}")
    def delete_subject_config(subject: str) -> dict[str, Any]:
        return {"compatibilityLevel": store.delete_compatibility(subject)}

    return api
