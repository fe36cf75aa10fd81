"""HTTP API of the ingestion service: JSON intake, stream stats, dead letters and dataset versions."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from driftloop.pipeline import pipeline_for_stream
from driftloop.service import Runtime

from .datasets import DatasetCutter, NoNewData, version_to_dict
from .handlers import (
    IDEMPOTENCY_KEY_MAX,
    MAX_BATCH_RECORDS,
    MAX_BODY_BYTES,
    IdempotencyKeyReused,
    dead_letters,
    ingest_idempotent,
    ingest_json_records,
    stream_stats,
)
from .kafka_intake import KafkaIntake
from .landing import Lander


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
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPException(422, f"the body is not valid JSON: {exc}") from None
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
        pipeline_for_stream(runtime.pipelines, stream)
        stats = stream_stats(lander, stream, pending=intake.pending_rows(stream))
        counters = intake.counters.get(stream)
        if counters is not None:
            stats["kafka_since_start"] = {
                "received": counters.received,
                "landed": counters.landed,
                "dead_lettered": counters.dead_lettered,
                "replay_skipped": counters.replay_skipped,
            }
        return stats

    @api.get("/streams/{stream}/dead-letters", tags=["streams"])
    def get_dead_letters(stream: str, limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        pipeline_for_stream(runtime.pipelines, stream)
        return {"stream": stream, "dead_letters": dead_letters(lander, stream, limit)}

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

    @api.get("/datasets/{dataset_version_id}", tags=["datasets"])
    def get_dataset(dataset_version_id: str) -> dict[str, Any]:
        return version_to_dict(cutter.get(dataset_version_id))

    return api
