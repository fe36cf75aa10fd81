"""HTTP API of the ingestion service: JSON intake, stream stats, dead letters and dataset versions."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from driftloop.contracts.pipeline import pipeline_for_stream
from driftloop.runtime.service import Runtime

from .datasets import DatasetCutter, NoNewData, version_to_dict
from .deadletters import MAX_REPLAY, list_dead_letters, replay
from .deadletters import counts as dead_letter_counts
from .handlers import (
    IDEMPOTENCY_KEY_MAX,
    MAX_BATCH_RECORDS,
    MAX_BODY_BYTES,
    IdempotencyKeyReused,
    freshness,
    ingest_idempotent,
    ingest_json_records,
    stream_stats,
)
from .kafka_intake import KafkaIntake
from .landing import Lander
from .versioning import compact, diff_versions, version_sources


class ReplayBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[int] | None = Field(default=None, max_length=MAX_REPLAY, description="Dead letters to replay.")
    reason: str | None = Field(default=None, description="Replay the open dead letters of this reason.")
    fixes: dict[int, Any] = Field(default_factory=dict, description="Dead-letter id -> corrected JSON record.")


def router(runtime: Runtime, lander: Lander, intake: KafkaIntake, cutter: DatasetCutter) -> APIRouter:
    api = APIRouter(prefix="/v1")

    @api.get("/streams", tags=["streams"])
    def list_streams() -> dict[str, Any]:
        return {
            "streams": [
                {
                    "stream": cfg.stream.name,
                    "topic": cfg.stream.topic,
                    "model": cfg.model.name,
                    "fields": [f.model_dump() for f in cfg.stream.fields],
                    "dataset": cfg.dataset.model_dump(),
                }
                for cfg in sorted(runtime.pipelines.values(), key=lambda c: c.stream.name)
            ]
        }

    @api.post("/streams/{stream}/records", tags=["streams"])
    async def post_records(stream: str, request: Request) -> dict[str, Any]:
        """Body ``{"records": [{...}, ...]}``. Per-record problems come back in ``rejected`` (and as dead
        letters); the request fails only for an unknown stream (404), a malformed body (422) or a batch over
        the limits (413). With an ``Idempotency-Key`` header a retried batch is landed once: the retry gets the
        first answer back with ``"replayed": true`` (the same key with a different body: 422)."""
        pipeline = pipeline_for_stream(runtime.pipelines, stream)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise HTTPException(413, f"request body of {declared} bytes is over the limit of {MAX_BODY_BYTES} bytes")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, f"request body of {len(body)} bytes is over the limit of {MAX_BODY_BYTES} bytes")
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:  # also an integer of over 4300 digits, or nesting too deep
            raise HTTPException(422, f"the body is not valid JSON: {str(exc)[:200]}") from None
        if not isinstance(payload, dict) or "records" not in payload:
            raise HTTPException(422, 'the body must be a JSON object {"records": [{...}, ...]}')
        extra = sorted(set(payload) - {"records"})
        if extra:
            raise HTTPException(422, f"unknown key(s) in the body: {extra}; expected only 'records'")
        records = payload["records"]
        if not isinstance(records, list):
            raise HTTPException(422, f"'records' must be a JSON array, got {type(records).__name__}")
        if len(records) > MAX_BATCH_RECORDS:
            raise HTTPException(
                413, f"{len(records)} records in one request; the limit is {MAX_BATCH_RECORDS}: split the batch"
            )
        key = request.headers.get("idempotency-key")
        if key is not None:
            if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX or not key.isprintable() or not key.isascii():
                raise HTTPException(
                    422, f"the Idempotency-Key header must be 1..{IDEMPOTENCY_KEY_MAX} printable ASCII characters"
                )
            try:
                answer = await run_in_threadpool(ingest_idempotent, pipeline, records, lander, key=key, body=body)
            except IdempotencyKeyReused as exc:
                raise HTTPException(422, str(exc)) from None
            if answer["accepted"] and not answer["replayed"]:
                cutter.request_check(stream)
            return answer
        result = await run_in_threadpool(ingest_json_records, pipeline, records, lander)
        if result.accepted:
            cutter.request_check(stream)
        return result.to_dict()

    @api.get("/streams/{stream}/stats", tags=["streams"])
    def get_stats(stream: str) -> dict[str, Any]:
        pipeline = pipeline_for_stream(runtime.pipelines, stream)
        stats = stream_stats(lander, stream, pending=intake.pending_rows(stream))
        stats["freshness"] = freshness(lander, stream, pipeline.dataset.freshness_seconds)
        counters = intake.counters.get(stream)
        if counters is not None:
            stats["kafka_since_start"] = {
                "received": counters.received,
                "landed": counters.landed,
                "dead_lettered": counters.dead_lettered,
                "replay_skipped": counters.replay_skipped,
            }
        return stats

    @api.get("/streams/{stream}/dead-letters", tags=["dead letters"])
    def get_dead_letters(
        stream: str,
        limit: int = Query(100, ge=1, le=1000),
        reason: str | None = Query(None, description="Only this reason."),
        include_replayed: bool = Query(False, description="Also the dead letters replayed since."),
        with_original: bool = Query(False, description="Include the original bytes (base64)."),
    ) -> dict[str, Any]:
        """The open dead letters of a stream, newest first, with the counts by reason."""
        pipeline_for_stream(runtime.pipelines, stream)
        letters = list_dead_letters(
            lander, stream, limit=limit, reason=reason, include_replayed=include_replayed, with_original=with_original
        )
        return {"stream": stream, "counts": dead_letter_counts(lander, stream), "dead_letters": letters}

    @api.post("/streams/{stream}/dead-letters/replay", tags=["dead letters"])
    def replay_dead_letters(stream: str, body: ReplayBody | None = None) -> dict[str, Any]:
        """Re-validate the selected open dead letters (``ids`` and/or ``reason``; all if neither) against the
        current pipeline config, with ``fixes`` replacing originals; land those that pass, once."""
        pipeline = pipeline_for_stream(runtime.pipelines, stream)
        body = body or ReplayBody()
        unknown = sorted(set(body.fixes) - set(body.ids or body.fixes))
        if body.ids is not None and unknown:
            raise HTTPException(422, f"fixes: ids {unknown} are not in 'ids'")
        result = replay(pipeline, lander, ids=body.ids, reason=body.reason, fixes=body.fixes)
        if result.replayed:
            cutter.request_check(stream)
        return {"stream": stream, **result.to_dict()}

    @api.get("/streams/{stream}/datasets", tags=["datasets"])
    def list_datasets(stream: str) -> dict[str, Any]:
        pipeline_for_stream(runtime.pipelines, stream)
        return {"stream": stream, "versions": [version_to_dict(v) for v in cutter.list_versions(stream)]}

    @api.post("/streams/{stream}/datasets", tags=["datasets"])
    def cut_dataset(stream: str) -> dict[str, Any]:
        """Cut a dataset version now from the rows landed since the last one (409 if there are none)."""
        pipeline_for_stream(runtime.pipelines, stream)
        # Rows of Kafka batches still in memory belong in this cut: land them first.
        intake.request_land(stream)
        try:
            return version_to_dict(cutter.cut(stream))
        except NoNewData as exc:
            raise HTTPException(409, str(exc)) from None

    def resolve(stream: str, ref: str) -> Any:
        """A version of ``stream`` named ``STREAM@vN``, ``vN`` or ``N``."""
        number = ref.rpartition("@v")[2] if "@v" in ref else ref.removeprefix("v")
        if not number.isdigit():
            raise HTTPException(422, f"version {ref!r}: expected STREAM@vN, vN or N")
        return cutter.get(f"{stream}@v{int(number)}")

    @api.get("/streams/{stream}/datasets/diff", tags=["datasets"])
    def diff_datasets(
        stream: str,
        from_version: str | None = Query(None, alias="from", description="Default: the version before `to`."),
        to_version: str | None = Query(None, alias="to", description="Default: the newest version."),
    ) -> dict[str, Any]:
        """Rows added and removed between two versions (by content) and the profile change per column."""
        pipeline = pipeline_for_stream(runtime.pipelines, stream)
        versions = cutter.list_versions(stream)
        new = resolve(stream, to_version) if to_version else (versions[-1] if versions else None)
        if new is None:
            raise HTTPException(409, f"stream {stream!r} has no dataset version yet")
        if from_version:
            old = resolve(stream, from_version)
        elif new.version > 1:
            old = cutter.get(f"{stream}@v{new.version - 1}")
        else:
            raise HTTPException(409, f"{new.id} is the first version: name the two versions to compare")
        return diff_versions(lander.store, pipeline.stream, old, new)

    @api.post("/streams/{stream}/datasets/compact", tags=["datasets"])
    def compact_landed(stream: str, keep_versions: int = Query(2, ge=0)) -> dict[str, Any]:
        """Retention: compact the landed batches of all but the newest ``keep_versions`` versions into one object
        per version (every version stays readable and reproducible)."""
        pipeline = pipeline_for_stream(runtime.pipelines, stream)
        return compact(lander.Session, lander.store, pipeline.stream, keep_versions)

    @api.get("/datasets/{dataset_version_id}", tags=["datasets"])
    def get_dataset(dataset_version_id: str) -> dict[str, Any]:
        """A version with its lineage and the landed batches (offsets, request ids) it took in."""
        row = cutter.get(dataset_version_id)
        return {**version_to_dict(row), "sources": version_sources(lander, row.id)}

    return api
