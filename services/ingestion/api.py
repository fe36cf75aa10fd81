"""HTTP API of the ingestion service: JSON intake, stream stats, dead letters and dataset versions."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from driftloop.clients.db.models import DatasetVersion
from driftloop.contracts.bounds import NAME_MAX_LENGTH, NOT_IN_NAME, Count, Name, PositiveInt, Text
from driftloop.contracts.pipeline import PipelineConfig, pipeline_for_stream
from driftloop.errors import ConflictError, InvalidRequest, PayloadTooLarge
from driftloop.runtime.service import api_context, body_limit

from .datasets import DatasetCutter, version_to_dict
from .deadletters import MAX_REPLAY, list_dead_letters, replay
from .deadletters import counts as dead_letter_counts
from .handlers import (
    IDEMPOTENCY_KEY_MAX,
    MAX_BATCH_RECORDS,
    MAX_BODY_BYTES,
    freshness,
    ingest_idempotent,
    ingest_json_records,
    stream_stats,
)
from .kafka_intake import KafkaIntake
from .landing import Lander
from .versioning import compact, diff_versions, version_sources

# A dataset version of the stream in the path: STREAM@vN, vN or N.
DatasetRef = Annotated[str, Field(max_length=NAME_MAX_LENGTH, pattern=rf"^([^{NOT_IN_NAME}]+@v|v)?[0-9]{{1,18}}$")]


class ReplayBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[PositiveInt] | None = Field(default=None, max_length=MAX_REPLAY, description="Dead letters to replay.")
    reason: Text | None = Field(
        default=None, max_length=200, description="Replay the open dead letters of this reason."
    )
    fixes: dict[PositiveInt, Any] = Field(default_factory=dict, description="Dead-letter id -> corrected JSON record.")


# The body of a record batch (read raw by post_records, so that its size is checked before it is parsed).
RECORDS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["records"],
                    "additionalProperties": False,
                    "properties": {
                        "records": {"type": "array", "maxItems": MAX_BATCH_RECORDS, "items": {"type": "object"}}
                    },
                }
            }
        },
    }
}


@dataclass(frozen=True)
class Context:
    """What the routes need; ``service.build`` puts it on ``app.state.context``."""

    pipelines: Mapping[str, PipelineConfig]
    lander: Lander
    intake: KafkaIntake
    cutter: DatasetCutter

    def pipeline(self, stream: str) -> PipelineConfig:
        return pipeline_for_stream(self.pipelines, stream)  # unknown stream: NotFoundError → 404


Ctx = Annotated[Context, Depends(api_context)]

router = APIRouter(prefix="/v1")


@router.get("/streams", tags=["streams"])
def list_streams(ctx: Ctx) -> dict[str, Any]:
    return {
        "streams": [
            {
                "stream": cfg.stream.name,
                "topic": cfg.stream.topic,
                "model": cfg.model.name,
                "fields": [f.model_dump() for f in cfg.stream.fields],
                "dataset": cfg.dataset.model_dump(),
            }
            for cfg in sorted(ctx.pipelines.values(), key=lambda c: c.stream.name)
        ]
    }


@router.get("/streams/{stream}/schema", tags=["streams"])
def get_stream_schema(ctx: Ctx, stream: str) -> dict[str, Any]:
    """The producer contract of a stream: the Avro value schema to write with (``driftloop up`` registers it under
    ``subject``, so a producer may use the latest registered version without registering anything), the topic,
    and the field roles. Another record name or namespace is accepted (resolved as an alias); field names and
    types are the contract."""
    cfg = ctx.pipeline(stream)
    spec = cfg.stream
    return {
        "stream": spec.name,
        "topic": spec.topic,
        "subject": spec.subject,
        "schema": spec.avro_schema(),
        "entity_key": spec.entity_key,
        "event_time": spec.event_time,
        "label": spec.label,
    }


async def _bounded_body(request: Request) -> bytes:
    """The request body, refused (413) over ``MAX_BODY_BYTES``: by its declared length before reading it."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {MAX_BODY_BYTES} bytes")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body of {len(body)} bytes is over the limit of {MAX_BODY_BYTES} bytes")
    return body


def _records_of(body: bytes) -> list[Any]:
    """The records of a ``{"records": [...]}`` body: 422 for anything else, 413 over ``MAX_BATCH_RECORDS``."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # also an integer of over 4300 digits, or nesting too deep
        raise InvalidRequest(f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(payload, dict) or "records" not in payload:
        raise InvalidRequest('the body must be a JSON object {"records": [{...}, ...]}')
    extra = sorted(set(payload) - {"records"})
    if extra:
        raise InvalidRequest(f"unknown key(s) in the body: {extra}; expected only 'records'")
    records = payload["records"]
    if not isinstance(records, list):
        raise InvalidRequest(f"'records' must be a JSON array, got {type(records).__name__}")
    if len(records) > MAX_BATCH_RECORDS:
        raise PayloadTooLarge(
            f"{len(records)} records in one request; the limit is {MAX_BATCH_RECORDS}: split the batch"
        )
    return records


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and (not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX or not key.isprintable() or not key.isascii()):
        raise InvalidRequest(f"the Idempotency-Key header must be 1..{IDEMPOTENCY_KEY_MAX} printable ASCII characters")
    return key


@router.post(
    "/streams/{stream}/records", tags=["streams"], openapi_extra={**RECORDS_BODY, **body_limit(MAX_BODY_BYTES)}
)
async def post_records(ctx: Ctx, stream: Name, request: Request) -> dict[str, Any]:
    """Body ``{"records": [{...}, ...]}``. Per-record problems come back in ``rejected`` (and as dead
    letters); the request fails only for an unknown stream (404), a malformed body (422) or a batch over
    the limits (413). With an ``Idempotency-Key`` header a retried batch is landed once: the retry gets the
    first answer back with ``"replayed": true`` (the same key with a different body: 422)."""
    pipeline = ctx.pipeline(stream)
    body = await _bounded_body(request)
    records = _records_of(body)
    key = _idempotency_key(request)
    if key is not None:
        # The same key with another body raises IdempotencyKeyReused (422).
        answer = await run_in_threadpool(ingest_idempotent, pipeline, records, ctx.lander, key=key, body=body)
        if answer["accepted"] and not answer["replayed"]:
            ctx.cutter.request_check(stream)
        return answer
    result = await run_in_threadpool(ingest_json_records, pipeline, records, ctx.lander)
    if result.accepted:
        ctx.cutter.request_check(stream)
    return result.to_dict()


@router.get("/streams/{stream}/stats", tags=["streams"])
def get_stats(ctx: Ctx, stream: Name) -> dict[str, Any]:
    pipeline = ctx.pipeline(stream)
    counters = ctx.intake.counters.get(stream)
    skipped = counters.replay_skipped if counters is not None else 0
    stats = stream_stats(ctx.lander, stream, pending=ctx.intake.pending_rows(stream), replay_skipped=skipped)
    stats["freshness"] = freshness(ctx.lander, stream, pipeline.dataset.freshness_seconds)
    if counters is not None:
        stats["kafka_since_start"] = {
            "received": counters.received,
            "landed": counters.landed,
            "dead_lettered": counters.dead_lettered,
            "replay_skipped": counters.replay_skipped,
        }
    return stats


@router.get("/streams/{stream}/dead-letters", tags=["dead letters"])
def get_dead_letters(
    ctx: Ctx,
    stream: Name,
    limit: int = Query(100, ge=1, le=1000),
    reason: Text | None = Query(None, max_length=200, description="Only this reason."),
    include_replayed: bool = Query(False, description="Also the dead letters replayed since."),
    with_original: bool = Query(False, description="Include the original bytes (base64)."),
) -> dict[str, Any]:
    """The open dead letters of a stream, newest first, with the counts by reason."""
    ctx.pipeline(stream)
    letters = list_dead_letters(
        ctx.lander, stream, limit=limit, reason=reason, include_replayed=include_replayed, with_original=with_original
    )
    return {"stream": stream, "counts": dead_letter_counts(ctx.lander, stream), "dead_letters": letters}


@router.post("/streams/{stream}/dead-letters/replay", tags=["dead letters"])
def replay_dead_letters(ctx: Ctx, stream: Name, body: ReplayBody | None = None) -> dict[str, Any]:
    """Re-validate the selected open dead letters (``ids`` and/or ``reason``; all if neither) against the
    current pipeline config, with ``fixes`` replacing originals; land those that pass, once."""
    pipeline = ctx.pipeline(stream)
    body = body or ReplayBody()
    unknown = sorted(set(body.fixes) - set(body.ids or body.fixes))
    if body.ids is not None and unknown:
        raise InvalidRequest(f"fixes: ids {unknown} are not in 'ids'")
    result = replay(pipeline, ctx.lander, ids=body.ids, reason=body.reason, fixes=body.fixes)
    if result.replayed:
        ctx.cutter.request_check(stream)
    return {"stream": stream, **result.to_dict()}


@router.get("/streams/{stream}/datasets", tags=["datasets"])
def list_datasets(ctx: Ctx, stream: Name) -> dict[str, Any]:
    ctx.pipeline(stream)
    return {"stream": stream, "versions": [version_to_dict(v) for v in ctx.cutter.list_versions(stream)]}


class CutBody(BaseModel):
    """A cut on demand after a change: made once ``min_rows`` rows at or after ``since`` (event time) landed."""

    model_config = ConfigDict(extra="forbid")
    since: datetime
    min_rows: PositiveInt | None = Field(default=None, description="default: dataset.min_rows_after_change")
    clock: Literal["event", "arrival"] = Field(
        default="event",
        description=(
            "the clock of ``since``: the stream's event time, or arrival (a change seen in predictions, whose times "
            "are the platform's): the earliest event time of the rows landed from then on; the answer's ``since``"
        ),
    )


@router.post("/streams/{stream}/datasets", tags=["datasets"])
def cut_dataset(ctx: Ctx, stream: Name, body: CutBody | None = None) -> dict[str, Any]:
    """Cut a dataset version now from the rows landed since the last one (409 if there are none). With a body
    ``{"since": ..., "min_rows": ...}``: a cut after a change, answered with its ``status`` (cut, covered, or
    waiting: made by ingestion itself once enough rows after ``since`` have landed)."""
    ctx.pipeline(stream)
    # Rows of Kafka batches still in memory belong in this cut: land them first.
    ctx.intake.request_land(stream)
    if body is not None:
        return ctx.cutter.cut_after_change(stream, body.since, body.min_rows, clock=body.clock)
    return version_to_dict(ctx.cutter.cut(stream))  # nothing new: NoNewData (409)


def _resolve(cutter: DatasetCutter, stream: str, ref: str) -> DatasetVersion:
    """A version of ``stream`` named ``STREAM@vN``, ``vN`` or ``N``."""
    number = ref.rpartition("@v")[2] if "@v" in ref else ref.removeprefix("v")
    if not number.isdigit():
        raise InvalidRequest(f"version {ref!r}: expected STREAM@vN, vN or N")
    return cutter.get(f"{stream}@v{int(number)}")


def _versions_to_compare(
    cutter: DatasetCutter, stream: str, from_version: str | None, to_version: str | None
) -> tuple[DatasetVersion, DatasetVersion]:
    """``(old, new)``: ``to`` or the newest version, and ``from`` or the version before it."""
    versions = cutter.list_versions(stream)
    new = _resolve(cutter, stream, to_version) if to_version else (versions[-1] if versions else None)
    if new is None:
        raise ConflictError(f"stream {stream!r} has no dataset version yet", code="no_dataset_version")
    if from_version:
        return _resolve(cutter, stream, from_version), new
    if new.version > 1:
        return cutter.get(f"{stream}@v{new.version - 1}"), new
    raise ConflictError(f"{new.id} is the first version: name the two versions to compare", code="first_version")


@router.get("/streams/{stream}/datasets/diff", tags=["datasets"])
def diff_datasets(
    ctx: Ctx,
    stream: Name,
    from_version: DatasetRef | None = Query(None, alias="from", description="Default: the version before `to`."),
    to_version: DatasetRef | None = Query(None, alias="to", description="Default: the newest version."),
) -> dict[str, Any]:
    """Rows added and removed between two versions (by content) and the profile change per column."""
    pipeline = ctx.pipeline(stream)
    old, new = _versions_to_compare(ctx.cutter, stream, from_version, to_version)
    return diff_versions(ctx.lander.store, pipeline.stream, old, new)


@router.post("/streams/{stream}/datasets/compact", tags=["datasets"])
def compact_landed(ctx: Ctx, stream: Name, keep_versions: Count = 2) -> dict[str, Any]:
    """Retention: compact the landed batches of all but the newest ``keep_versions`` versions into one object
    per version (every version stays readable and reproducible)."""
    pipeline = ctx.pipeline(stream)
    return compact(ctx.lander.Session, ctx.lander.store, pipeline.stream, keep_versions)


@router.get("/datasets/{dataset_version_id}", tags=["datasets"])
def get_dataset(ctx: Ctx, dataset_version_id: Name) -> dict[str, Any]:
    """A version with its lineage and the landed batches (offsets, request ids) it took in."""
    row = ctx.cutter.get(dataset_version_id)
    return {**version_to_dict(row), "sources": version_sources(ctx.lander, row.id)}
