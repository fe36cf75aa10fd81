"""The Confluent Schema Registry REST API (the part that Avro clients use), errors in Confluent's shape."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from driftloop.contracts.bounds import Name, PositiveInt
from driftloop.runtime.service import ERROR_RESPONSES, ErrorBody, api_context

from .errors import InvalidCompatibilityLevel, InvalidSchema, RegistryError
from .store import SchemaStore

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"
# A version of a subject: a number, or latest (-1 too, as Confluent's clients send it).
SchemaVersion = Annotated[str, Field(pattern=r"^(latest|-1|[1-9][0-9]{0,8})$")]


async def _schema_body(request: Request) -> str:
    try:
        body = json.loads(await request.body() or b"{}")
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or nested too deep
        raise InvalidSchema(f"request body is not JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
        raise InvalidSchema('request body must be {"schema": "<schema as a JSON string>"}')
    schema_type = body.get("schemaType", "AVRO") or "AVRO"
    if schema_type != "AVRO":
        raise InvalidSchema(f"schemaType {schema_type!r} is not supported here: only AVRO")
    if body.get("references"):
        raise InvalidSchema("schema references are not supported: register self-contained schemas")
    return body["schema"]


async def _level_body(request: Request) -> str:
    try:
        body = json.loads(await request.body() or b"{}")
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or nested too deep
        raise InvalidCompatibilityLevel(f"request body is not JSON: {exc}") from None
    level = body.get("compatibility") or body.get("compatibilityLevel") if isinstance(body, dict) else None
    if not isinstance(level, str):
        raise InvalidCompatibilityLevel('request body must be {"compatibility": "BACKWARD"} (or another level)')
    return level


def _flag(value: str | None) -> bool:
    return str(value).lower() == "true"


def _body_schema(required: str, properties: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI of a raw JSON body the registry reads itself (to answer its errors in Confluent's shape)."""
    schema = {"type": "object", "required": [required], "properties": properties}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


SCHEMA_BODY = _body_schema(
    "schema",
    {
        "schema": {"type": "string", "description": "The Avro schema, as a JSON string."},
        "schemaType": {"type": "string", "enum": ["AVRO"]},
        "references": {"type": "array", "maxItems": 0},
    },
)
LEVEL_BODY = _body_schema("compatibility", {"compatibility": {"type": "string"}})


class RegistryResponse(JSONResponse):
    media_type = MEDIA_TYPE


async def registry_error_response(_request: Request, exc: Exception) -> JSONResponse:
    """The registry's errors in Confluent's shape (the stock clients read ``error_code``); the errors of the
    platform around it (a missing token, ...) keep driftloop's ``{"detail", "code"}``."""
    assert isinstance(exc, RegistryError)
    return RegistryResponse(status_code=exc.status_code, content={"error_code": exc.error_code, "message": str(exc)})


@dataclass(frozen=True)
class Context:
    """What the routes need; ``service.build`` puts it on ``app.state.context``."""

    store: SchemaStore


Ctx = Annotated[Context, Depends(api_context)]


class RegistryErrorBody(BaseModel):
    """An error of the registry itself, in Confluent's shape."""

    error_code: int
    message: str


# The registry answers its own errors in Confluent's shape and media type, the platform's (token, body size,
# parameters) in driftloop's, as application/json.
REGISTRY_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {
        "model": RegistryErrorBody | ErrorBody,
        "description": answer["description"],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    for status, answer in ERROR_RESPONSES.items()
}

router = APIRouter(tags=["schema registry"], default_response_class=RegistryResponse, responses=REGISTRY_ERRORS)


@router.get("/")
def root() -> dict[str, Any]:
    return {}


@router.get("/schemas/types")
def schema_types() -> list[str]:
    return ["AVRO"]


@router.get("/schemas/ids/{schema_id}")
def get_schema(ctx: Ctx, schema_id: PositiveInt) -> dict[str, Any]:
    return {"schema": ctx.store.schema_by_id(schema_id)}


@router.get("/schemas/ids/{schema_id}/schema")
def get_raw_schema(ctx: Ctx, schema_id: PositiveInt) -> Any:
    return json.loads(ctx.store.schema_by_id(schema_id))


@router.get("/schemas/ids/{schema_id}/subjects")
def get_schema_subjects(ctx: Ctx, schema_id: PositiveInt) -> list[str]:
    return sorted({sv.subject for sv in ctx.store.subjects_of(schema_id)})


@router.get("/schemas/ids/{schema_id}/versions")
def get_schema_versions(ctx: Ctx, schema_id: PositiveInt) -> list[dict[str, Any]]:
    return [{"subject": sv.subject, "version": sv.version} for sv in ctx.store.subjects_of(schema_id)]


@router.get("/subjects")
def list_subjects(ctx: Ctx, deleted: str | None = None) -> list[str]:
    return ctx.store.subjects(include_deleted=_flag(deleted))


@router.get("/subjects/{subject}/versions")
def list_versions(ctx: Ctx, subject: Name) -> list[int]:
    return ctx.store.versions(subject)


@router.get("/subjects/{subject}/versions/{version}")
def get_version(ctx: Ctx, subject: Name, version: SchemaVersion) -> dict[str, Any]:
    sv = ctx.store.get_version(subject, version)
    return {"subject": sv.subject, "version": sv.version, "id": sv.schema_id, "schema": sv.schema}


@router.get("/subjects/{subject}/versions/{version}/schema")
def get_version_schema(ctx: Ctx, subject: Name, version: SchemaVersion) -> Any:
    return json.loads(ctx.store.get_version(subject, version).schema)


@router.post("/subjects/{subject}/versions", openapi_extra=SCHEMA_BODY)
async def register(ctx: Ctx, subject: Name, request: Request) -> dict[str, Any]:
    schema_text = await _schema_body(request)
    schema_id = ctx.store.register(subject, schema_text)
    sv = ctx.store.lookup(subject, schema_text)
    return {"id": schema_id, "subject": subject, "version": sv.version, "schema": sv.schema}


@router.post("/subjects/{subject}", openapi_extra=SCHEMA_BODY)
async def lookup(ctx: Ctx, subject: Name, request: Request) -> dict[str, Any]:
    sv = ctx.store.lookup(subject, await _schema_body(request))
    return {"subject": sv.subject, "version": sv.version, "id": sv.schema_id, "schema": sv.schema}


@router.delete("/subjects/{subject}")
def delete_subject(ctx: Ctx, subject: Name, permanent: str | None = None) -> list[int]:
    return ctx.store.delete_subject(subject, permanent=_flag(permanent))


@router.delete("/subjects/{subject}/versions/{version}")
def delete_version(ctx: Ctx, subject: Name, version: SchemaVersion, permanent: str | None = None) -> int:
    return ctx.store.delete_version(subject, version, permanent=_flag(permanent))


@router.post("/compatibility/subjects/{subject}/versions/{version}", openapi_extra=SCHEMA_BODY)
async def compatibility_one(
    ctx: Ctx, subject: Name, version: SchemaVersion, request: Request, verbose: str | None = None
) -> Any:
    problems = ctx.store.test_compatibility(subject, await _schema_body(request), version)
    return {"is_compatible": not problems, **({"messages": problems} if _flag(verbose) else {})}


@router.post("/compatibility/subjects/{subject}/versions", openapi_extra=SCHEMA_BODY)
async def compatibility_all(ctx: Ctx, subject: Name, request: Request, verbose: str | None = None) -> Any:
    problems = ctx.store.test_compatibility(subject, await _schema_body(request), None)
    return {"is_compatible": not problems, **({"messages": problems} if _flag(verbose) else {})}


@router.get("/config")
def get_global_config(ctx: Ctx) -> dict[str, Any]:
    return {"compatibilityLevel": ctx.store.get_compatibility(None)}


@router.put("/config", openapi_extra=LEVEL_BODY)
async def put_global_config(ctx: Ctx, request: Request) -> dict[str, Any]:
    return {"compatibility": ctx.store.set_compatibility(None, await _level_body(request))}


@router.get("/config/{subject}")
def get_subject_config(ctx: Ctx, subject: Name, defaultToGlobal: str | None = None) -> dict[str, Any]:
    return {"compatibilityLevel": ctx.store.get_compatibility(subject, default_to_global=_flag(defaultToGlobal))}


@router.put("/config/{subject}", openapi_extra=LEVEL_BODY)
async def put_subject_config(ctx: Ctx, subject: Name, request: Request) -> dict[str, Any]:
    return {"compatibility": ctx.store.set_compatibility(subject, await _level_body(request))}


@router.delete("/config/{subject}")
def delete_subject_config(ctx: Ctx, subject: Name) -> dict[str, Any]:
    return {"compatibilityLevel": ctx.store.delete_compatibility(subject)}
