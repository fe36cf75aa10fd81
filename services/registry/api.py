"""Registry HTTP API: models, versions (signature, metrics, lineage, gate, tags) and aliases.

Reads are open (or token-protected by ``security.protect_reads``); alias moves, rollback and annotations need an
admin token (``driftloop.runtime.security``). Versions are created and gated only through events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from driftloop.clients.db.models import ModelAlias, ModelVersion
from driftloop.contracts.bounds import Name, PositiveInt, Text
from driftloop.errors import InvalidRequest, NotFoundError
from driftloop.runtime.security import principal_of
from driftloop.runtime.service import api_context

from .handlers import RegistryHandlers
from .repository import Registry

ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,99}$"
TagKey = Annotated[Text, Field(min_length=1, max_length=200)]


class MoveAliasBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: PositiveInt = Field(description="The version the alias points at after the move.")
    reason: Text = Field(min_length=1, max_length=2000, description="Why, in words (kept with the alias and event).")
    expected_version: PositiveInt | None = Field(
        default=None,
        description="Optimistic check: move only if the alias points at this version now (409 otherwise).",
    )


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: PositiveInt | None = Field(
        default=None, description="Version to roll back to; default: the newest promoted one before champion."
    )
    reason: Text = Field(default="", max_length=2000, description="Why, in words.")


class AnnotateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tags: dict[TagKey, Text | None] | None = Field(
        default=None, description="Tags to set (merged into the existing ones); a null value deletes that tag."
    )
    description: Text | None = Field(default=None, max_length=10_000, description="Replaces the description.")


def version_view(row: ModelVersion, aliases: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "model": row.model,
        "version": row.version,
        "status": row.status,
        "aliases": sorted(name for name, v in (aliases or {}).items() if v == row.version),
        "description": row.description or "",
        "tags": row.tags or {},
        "signature": row.signature or {},
        "run_id": row.run_id,
        "artifact_uri": row.artifact_uri,
        "artifact_sha256": row.artifact_sha256,
        "dataset_version_id": row.dataset_version_id,
        "feature_set_uri": row.feature_set_uri,
        "metrics": row.metrics,
        "lineage": row.lineage,
        "gate": row.gate,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "decided_at": row.decided_at.isoformat() if row.decided_at else None,
    }


def alias_view(found: ModelAlias) -> dict[str, Any]:
    envelope = (found.event or {}).get("envelope") or {}
    return {
        "alias": found.alias,
        "version": found.version,
        "moved_by": found.moved_by,
        "reason": found.reason,
        "event_id": found.event_id,
        # The move's event's cascade and cause: a replica that loads the champion from here (not from the bus)
        # continues that cascade's timeline.
        "cascade_id": envelope.get("cascade_id"),
        "caused_by": envelope.get("caused_by"),
        "updated_at": found.updated_at.isoformat() if found.updated_at else None,
    }


@dataclass(frozen=True)
class Context:
    """What the routes need; ``service.build`` puts it on ``app.state.context``."""

    registry: Registry
    handlers: RegistryHandlers


Ctx = Annotated[Context, Depends(api_context)]

router = APIRouter(prefix="/v1/models", tags=["registry"])


def unknown_model(name: str) -> NotFoundError:
    return NotFoundError(f"unknown model {name!r}: no version of it has been registered")


@router.get("")
def list_models(ctx: Ctx) -> dict[str, Any]:
    """Every registered model with its version count, latest version and champion version."""
    return {"models": ctx.registry.models()}


@router.get("/{name}/versions")
def list_versions(ctx: Ctx, name: Name) -> dict[str, Any]:
    """Every version of the model, oldest first, with its aliases."""
    rows = ctx.registry.versions(name)
    aliases = ctx.registry.aliases(name)
    return {"model": name, "aliases": aliases, "versions": [version_view(r, aliases) for r in rows]}


@router.get("/{name}/versions/{version}")
def get_version(ctx: Ctx, name: Name, version: PositiveInt) -> dict[str, Any]:
    """One version: artifact and sha256, signature, metrics, tags, description, lineage, gate numbers."""
    return version_view(ctx.registry.get_version(name, version), ctx.registry.aliases(name))


@router.patch("/{name}/versions/{version}")
def annotate_version(ctx: Ctx, name: Name, version: PositiveInt, body: AnnotateBody) -> dict[str, Any]:
    """Set or delete tags and replace the description of a version (admin)."""
    if body.tags is None and body.description is None:
        raise InvalidRequest("give `tags` and/or `description`")
    for key in body.tags or {}:
        if not key or len(key) > 200:
            raise InvalidRequest(f"tags: key {key!r} must have 1 to 200 characters")
    row = ctx.registry.annotate(name, version, tags=body.tags, description=body.description)
    return version_view(row, ctx.registry.aliases(name))


@router.get("/{name}/aliases")
def list_aliases(ctx: Ctx, name: Name) -> dict[str, Any]:
    """Every alias of the model with its version, who moved it and why."""
    if not ctx.registry.model_exists(name):
        raise unknown_model(name)
    return {"model": name, "aliases": [alias_view(a) for a in ctx.registry.alias_rows(name)]}


@router.get("/{name}/aliases/{alias}")
def get_alias(ctx: Ctx, name: Name, alias: Name) -> dict[str, Any]:
    """The version an alias points at, who moved it there and why."""
    registry = ctx.registry
    found = registry.alias(name, alias)
    if found is None:
        if not registry.model_exists(name):
            raise unknown_model(name)
        raise NotFoundError(f"model {name!r} has no alias {alias!r}; its aliases: {registry.aliases(name)}")
    row = registry.get_version(name, found.version)
    return {"model": name, **alias_view(found), "model_version": version_view(row, registry.aliases(name))}


@router.get("/{name}/aliases/{alias}/history")
def alias_history(ctx: Ctx, name: Name, alias: Name, limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
    """Every move of the alias, newest first (who, why, from which version, rollback or not), from the
    event log."""
    if not ctx.registry.model_exists(name):
        raise unknown_model(name)
    return {"model": name, "alias": alias, "moves": ctx.registry.alias_history(name, alias, limit)}


@router.put("/{name}/aliases/{alias}")
def move_alias(
    ctx: Ctx,
    name: Name,
    body: MoveAliasBody,
    request: Request,
    alias: str = Path(pattern=ALIAS_PATTERN, description="champion, challenger or any name."),
) -> dict[str, Any]:
    """Point an alias at a version, atomically (admin). Emits ``ModelPromoted`` with the alias, who and why;
    serving follows ``champion`` only. Asking for the move the alias already has re-sends the same event.
    409 when ``expected_version`` does not match."""
    # AliasConflict answers 409; EventNotSent 503 (the error tree carries the status).
    expected: Any = body.expected_version if body.expected_version is not None else ...
    return ctx.handlers.move_alias(
        name,
        alias,
        body.version,
        moved_by=principal_of(request).name,
        reason=body.reason,
        expected_version=expected,
    )


@router.post("/{name}/rollback")
def rollback(ctx: Ctx, name: Name, request: Request, body: RollbackBody | None = None) -> dict[str, Any]:
    """Move ``champion`` back (admin): to ``to``, or to the newest promoted version before the current
    champion. Serving follows. 409 when there is nothing to roll back to."""
    body = body or RollbackBody()
    # RollbackImpossible and AliasConflict answer 409; EventNotSent 503.
    return ctx.handlers.rollback(name, body.to, moved_by=principal_of(request).name, reason=body.reason)
