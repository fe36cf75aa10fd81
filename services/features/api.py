"""HTTP API of the features service: feature definitions, materialized versions, online lookups."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from driftloop.db.models import FeatureSet
from driftloop.pipeline import pipeline_for_stream
from driftloop.service import Runtime

from .onlinestore import lookup_online

MAX_ENTITIES_PER_LOOKUP = 10_000


class OnlineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stream: str = Field(min_length=1, description="Stream name, as in its pipeline config.")
    entities: list[str] = Field(min_length=1, max_length=MAX_ENTITIES_PER_LOOKUP, description="Entity keys.")


class OnlineResponse(BaseModel):
    values: dict[str, dict[str, Any]]
    missing: list[str]


def router(runtime: Runtime) -> APIRouter:
    api = APIRouter(prefix="/v1/features", tags=["features"])

    @api.get("")
    def list_features(stream: str | None = None) -> dict[str, Any]:
        """Per stream: its feature names and kinds (from the pipeline) and the materialized versions, newest
        first. ``?stream=`` narrows to one stream (unknown stream: 404)."""
        pipelines = (
            [pipeline_for_stream(runtime.pipelines, stream)] if stream is not None else runtime.pipelines.values()
        )
        streams = []
        with runtime.Session() as session:
            for pipeline in pipelines:
                spec = pipeline.stream
                sets = session.scalars(
                    sa.select(FeatureSet)
                    .where(FeatureSet.stream == spec.name)
                    .order_by(FeatureSet.created_at.desc(), FeatureSet.dataset_version_id.desc())
                ).all()
                streams.append(
                    {
                        "stream": spec.name,
                        "model": pipeline.model.name,
                        "entity_key": spec.entity_key,
                        "event_time": spec.event_time,
                        "label": spec.label,
                        "features": [
                            {"name": f.name, "kind": f.kind, "source": f.source, "expr": f.expr}
                            for f in pipeline.features
                        ],
                        "versions": [
                            {
                                "dataset_version_id": s.dataset_version_id,
                                "uri": s.uri,
                                "row_count": s.row_count,
                                "feature_names": s.feature_names,
                                "created_at": s.created_at,
                            }
                            for s in sets
                        ],
                    }
                )
        return {"streams": streams}

    @api.post("/online")
    def online(request: OnlineRequest) -> OnlineResponse:
        """Latest feature values of the entities (each with its ``event_time``); unknown entities are listed in
        ``missing``. Unknown stream: 404."""
        pipeline_for_stream(runtime.pipelines, request.stream)
        found = lookup_online(runtime.engine, request.stream, request.entities)
        missing = [e for e in dict.fromkeys(request.entities) if e not in found]
        return OnlineResponse(values=found, missing=missing)

    return api
