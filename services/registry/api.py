"""Registry HTTP API: models, versions (metrics, lineage, gate) and aliases. Read-only: the registry changes
only through events."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from driftloop.db.models import ModelVersion
from driftloop.errors import NotFoundError

from .repository import Registry


def version_view(row: ModelVersion, aliases: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "model": row.model,
        "version": row.version,
        "status": row.status,
        "aliases": sorted(name for name, v in (aliases or {}).items() if v == row.version),
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


def router(registry: Registry) -> APIRouter:
    api = APIRouter(prefix="/v1/models", tags=["registry"])

    @api.get("")
    def list_models() -> dict[str, Any]:
        return {"models": registry.models()}

    @api.get("/{name}/versions")
    def list_versions(name: str) -> dict[str, Any]:
        rows = registry.versions(name)
        aliases = registry.aliases(name)
        return {"model": name, "aliases": aliases, "versions": [version_view(r, aliases) for r in rows]}

    @api.get("/{name}/versions/{version}")
    def get_version(name: str, version: int) -> dict[str, Any]:
        return version_view(registry.get_version(name, version), registry.aliases(name))

    @api.get("/{name}/aliases/{alias}")
    def get_alias(name: str, alias: str) -> dict[str, Any]:
        found = registry.alias(name, alias)
        if found is None:
            if not registry.model_exists(name):
                raise NotFoundError(f"unknown model {name!r}: no version of it has been registered")
            raise NotFoundError(f"model {name!r} has no alias {alias!r}; its aliases: {registry.aliases(name)}")
        row = registry.get_version(name, found.version)
        return {
            "model": name,
            "alias": alias,
            "version": found.version,
            "event_id": found.event_id,
            "updated_at": found.updated_at.isoformat() if found.updated_at else None,
            "model_version": version_view(row, registry.aliases(name)),
        }

    return api
