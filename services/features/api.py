"""HTTP API of the features service: feature definitions, materialized versions, online lookups."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json
from sqlalchemy.orm import Session, sessionmaker

from driftloop.clients.db.models import FeatureSet
from driftloop.contracts.bounds import Name, Text
from driftloop.contracts.pipeline import PipelineConfig, pipeline_for_stream
from driftloop.runtime.service import api_context

from .onlinestore import OnlineStore

MAX_ENTITIES_PER_LOOKUP = 10_000
# Threads of a process that run lookups (the hop off the event loop); the database store's pool has as many.
LOOKUP_THREADS = 8


class OnlineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stream: Name = Field(description="Stream name, as in its pipeline config.")
    entities: list[Annotated[Text, Field(max_length=200)]] = Field(
        min_length=1, max_length=MAX_ENTITIES_PER_LOOKUP, description="Entity keys."
    )


class Freshness(BaseModel):
    event_time: datetime | None = Field(description="Event time the entity's values are as of (UTC).")
    updated_at: datetime | None = Field(description="When the online store last wrote them (UTC).")
    age_seconds: float | None = Field(description="Seconds from updated_at to this answer.")


class OnlineResponse(BaseModel):
    stream: str
    feature_view_version: str
    values: dict[str, dict[str, Any]] = Field(
        description="entity -> feature name -> value, plus 'event_time' (ISO 8601, UTC) as before."
    )
    freshness: dict[str, Freshness]
    missing: list[str] = Field(description="Requested entities the online store does not hold, in request order.")


def _feature_type(pipeline: PipelineConfig, name: str) -> str:
    spec = next(f for f in pipeline.features if f.name == name)
    return "string" if spec.kind == "categorical" else "double"


def _view(pipeline: PipelineConfig) -> dict[str, Any]:
    spec = pipeline.stream
    schema = [
        {"name": spec.entity_key, "type": spec.field(spec.entity_key).type, "role": "entity_key"},
        {"name": spec.event_time, "type": "timestamp", "role": "event_time"},
        *({"name": n, "type": _feature_type(pipeline, n), "role": "feature"} for n in pipeline.feature_names),
        *([{"name": spec.label, "type": spec.field(spec.label).type, "role": "label"}] if spec.label else []),
    ]
    return {"name": spec.name, "version": pipeline.feature_view_version, "schema": schema}


def _stream_view(pipeline: PipelineConfig, sets: list[FeatureSet]) -> dict[str, Any]:
    spec = pipeline.stream
    return {
        "stream": spec.name,
        "model": pipeline.model.name,
        "entity_key": spec.entity_key,
        "event_time": spec.event_time,
        "label": spec.label,
        "view": _view(pipeline),
        "features": [
            {
                "name": f.name,
                "kind": f.kind,
                "source": f.source,
                "expr": f.expr,
                "aggregate": f.aggregate,
                "window": f.window,
            }
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


@dataclass(frozen=True)
class Context:
    """What the routes need; ``service.build`` puts it on ``app.state.context``."""

    pipelines: Mapping[str, PipelineConfig]
    Session: sessionmaker[Session]
    online_store: OnlineStore
    answers: OnlineAnswers = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "answers", OnlineAnswers(self.pipelines, self.online_store))


Ctx = Annotated[Context, Depends(api_context)]

router = APIRouter(prefix="/v1/features", tags=["features"])


@router.get("")
def list_features(ctx: Ctx, stream: Name | None = None) -> dict[str, Any]:
    """Per stream: its feature view (name, definition version, schema), the feature definitions and the
    materialized versions, newest first. ``?stream=`` narrows to one stream (unknown stream: 404)."""
    pipelines = [pipeline_for_stream(ctx.pipelines, stream)] if stream is not None else ctx.pipelines.values()
    streams = []
    with ctx.Session() as session:
        for pipeline in pipelines:
            sets = session.scalars(
                sa.select(FeatureSet)
                .where(FeatureSet.stream == pipeline.stream.name)
                .order_by(FeatureSet.created_at.desc(), FeatureSet.dataset_version_id.desc())
            ).all()
            streams.append(_stream_view(pipeline, list(sets)))
    return {"streams": streams}


class OnlineAnswers:
    """Renders ``POST /v1/features/online``: reads the store and writes the JSON answer in one go, on one of its
    own threads (the one hop off the event loop per lookup; the database store's pool is as large). The answer
    is built as plain dicts and serialized once by pydantic-core, byte for byte what ``OnlineResponse`` gives."""

    def __init__(
        self, pipelines: Mapping[str, PipelineConfig], store: OnlineStore, threads: int = LOOKUP_THREADS
    ) -> None:
        self.pipelines = pipelines
        self.store = store
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="online-lookup")
        # stream -> (feature names, feature view version), computed once: both are derived per call.
        self._views: dict[str, tuple[tuple[str, ...], str]] = {}

    def _view(self, stream: str) -> tuple[tuple[str, ...], str]:
        view = self._views.get(stream)
        if view is None:
            pipeline = pipeline_for_stream(self.pipelines, stream)  # unknown stream: NotFoundError (404)
            view = self._views[stream] = (tuple(pipeline.feature_names), pipeline.feature_view_version)
        return view

    def answer(self, stream: str, entities: list[str]) -> bytes:
        names, view_version = self._view(stream)
        found = self.store.read(stream, entities)  # OnlineStoreUnavailable answers 503
        now = datetime.now(tz=UTC)
        values: dict[str, dict[str, Any]] = {}
        freshness: dict[str, dict[str, Any]] = {}
        for entity, (stored, event_time, updated_at) in found.items():
            row = {name: stored.get(name) for name in names}
            row["event_time"] = None if event_time is None else event_time.isoformat()
            values[entity] = row
            freshness[entity] = {
                "event_time": event_time,
                "updated_at": updated_at,
                "age_seconds": None if updated_at is None else (now - updated_at).total_seconds(),
            }
        missing = [e for e in dict.fromkeys(entities) if e not in found] if len(found) < len(entities) else []
        answer = {
            "stream": stream,
            "feature_view_version": view_version,
            "values": values,
            "freshness": freshness,
            "missing": missing,
        }
        return to_json(answer, inf_nan_mode="null")

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


@router.post("/online", response_model=OnlineResponse)
async def online(ctx: Ctx, request: OnlineRequest) -> Response:
    """Latest feature values of the entities (each with its ``event_time``) and their freshness; entities the
    store does not hold are listed in ``missing`` (not an error). Unknown stream: 404; the online store's
    server (Redis) not answering: 503 saying where it was looked for."""
    answers = ctx.answers
    loop = asyncio.get_running_loop()
    body = await loop.run_in_executor(answers.executor, answers.answer, request.stream, request.entities)
    return Response(body, media_type="application/json")
