"""Serving HTTP API: ``/v1`` (driftloop's own: inline instances or entity keys, feedback) and ``/v2`` (the Open
Inference Protocol, KServe v2), both answered by the served champion (or its challenger during a rollout)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from driftloop.contracts.events import Event
from driftloop.contracts.payloads import Payload
from driftloop.contracts.pipeline import PipelineConfig, pipeline_for_model
from driftloop.errors import NotFoundError, ValidationFailed

from . import oip
from . import predict as predicting
from .feedback import FeedbackDesk, FeedbackItem, PredictionRecorder
from .online import OnlineStoreUnavailable
from .rollout import RolloutController
from .served import ModelTable, ServedModel

MAX_INSTANCES = 10_000
MAX_FEEDBACK = 10_000
# The data plane is public (no admin token), as driftloop.runtime.security reads this mark.
DATA_PLANE: dict[str, Any] = {"x-driftloop-public": True}

EntityLookup = Callable[[str, list[str]], tuple[dict[str, dict[str, Any]], list[str]]]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: list[dict[str, Any]] | None = Field(
        default=None, min_length=1, max_length=MAX_INSTANCES, description="Raw stream fields, one object per row."
    )
    entities: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_INSTANCES,
        description="Entity keys: each row's features are the entity's latest values in the online store.",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_of(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("instances" in data) == ("entities" in data):
            raise ValueError("give exactly one of 'instances' (raw fields) or 'entities' (entity keys)")
        return data


class PredictResponse(BaseModel):
    model: str
    version: int
    request_id: str
    predictions: list[float]


class FeedbackRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actual: float = Field(description="The actual outcome (the label).")
    request_id: str | None = Field(default=None, description="The request_id of the prediction ...")
    index: int = Field(default=0, ge=0, description="... and the row within that request.")
    entity: str | None = Field(default=None, description="Or the entity: its newest prediction at or before 'at'.")
    at: datetime | None = Field(default=None, description="With 'entity' (default: now). ISO 8601.")

    @model_validator(mode="after")
    def _one_key(self) -> FeedbackRow:
        if (self.request_id is None) == (self.entity is None):
            raise ValueError("give exactly one of 'request_id' (+ 'index') or 'entity' (+ 'at')")
        if self.at is not None and self.at.tzinfo is None:
            raise ValueError("'at' needs a time zone (e.g. 2026-01-01T12:00:00Z)")
        return self


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    feedback: list[FeedbackRow] = Field(min_length=1, max_length=MAX_FEEDBACK)


def _unprocessable(exc: ValidationFailed) -> HTTPException:
    return HTTPException(status_code=422, detail={"reason": exc.reason, "field": exc.field, "message": str(exc)})


def _discard(_event: Event[Payload]) -> None:
    """Shadow scoring logs nothing: PredictionLogged is what clients were answered."""


def router(
    table: ModelTable,
    pipelines: dict[str, PipelineConfig],
    publish: Callable[[Event[Payload]], None],
    replica: str,
    *,
    rollouts: RolloutController | None = None,
    recorder: PredictionRecorder | None = None,
    feedback: FeedbackDesk | None = None,
    lookup_entities: EntityLookup | None = None,
) -> APIRouter:
    api = APIRouter()

    def served_or_503(name: str) -> ServedModel:
        pipeline_for_model(pipelines, name)  # unknown model: NotFoundError → 404
        served = table.get(name)
        if served is None:
            problem = table.problem(name)
            detail = f"model {name!r} has no version loaded yet on this replica: waiting for a promotion"
            if problem is not None:
                detail += f" (v{problem.version} was refused: {problem.reason})"
            raise HTTPException(status_code=503, detail=detail)
        return served

    def answer(
        name: str,
        instances: list[dict[str, Any]],
        *,
        features: pd.DataFrame | None = None,
        entities: list[str] | None = None,
    ) -> dict[str, Any]:
        """Score with the champion, or the arm a running rollout picks; 422 for the client's mistakes."""
        served = served_or_503(name)  # one reference for the whole request: a swap does not affect it
        rollout = rollouts.get(name) if rollouts is not None else None

        def score(model: ServedModel, rows: list[dict[str, Any]], log_it: bool) -> dict[str, Any]:
            result = predicting.predict(
                model, rows, publish if log_it else _discard, features=features, entities=entities
            )
            if log_it and recorder is not None:
                recorder.record(result)
            return result

        with predicting.PREDICT_SECONDS.labels(name).time():
            try:
                if rollout is None or rollouts is None:
                    return score(served, instances, True)
                return rollouts.predict(rollout, instances, score)
            except ValidationFailed as exc:
                raise _unprocessable(exc) from None

    def entity_rows(pipeline: PipelineConfig, entities: list[str]) -> tuple[list[dict[str, Any]], pd.DataFrame]:
        if lookup_entities is None:
            raise HTTPException(status_code=501, detail="entity lookups are not configured on this replica")
        try:
            values, missing = lookup_entities(pipeline.stream.name, list(dict.fromkeys(entities)))
        except OnlineStoreUnavailable as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None
        if missing:
            raise HTTPException(
                status_code=422,
                detail={
                    "reason": "unknown_entity",
                    "field": "entities",
                    "message": f"no online features for entit{'y' if len(missing) == 1 else 'ies'} {missing[:20]} "
                    f"in stream {pipeline.stream.name!r}",
                },
            )
        rows = [dict(values[e]) for e in entities]
        features = pd.DataFrame(rows).reindex(columns=pipeline.feature_names)
        for spec in pipeline.features:
            if spec.kind == "numeric":
                features[spec.name] = pd.to_numeric(features[spec.name], errors="coerce").astype("float64")
        return rows, features

    # --- /v1 ------------------------------------------------------------------------------------------------

    @api.get("/v1/models", tags=["serving"])
    def list_served() -> dict[str, Any]:
        return {"replica": replica, "models": [describe_one(s) for s in table.all()]}

    def describe_one(served: ServedModel) -> dict[str, Any]:
        out = served.describe()
        rollout = rollouts.get(served.model) if rollouts is not None else None
        out["rollout"] = (
            None
            if rollout is None
            else {
                "mode": rollout.mode,
                "challenger_version": rollout.challenger.version,
                "step": rollout.step,
                "share": rollout.share,
                "stats": rollout.stats(),
            }
        )
        return out

    @api.get("/v1/models/{name}", tags=["serving"])
    def describe(name: str) -> dict[str, Any]:
        served = served_or_503(name)
        problem = table.problem(name)
        return {
            **describe_one(served),
            "replica": replica,
            "last_refused": None
            if problem is None
            else {
                "version": problem.version,
                "sha256": problem.sha256,
                "reason": problem.reason,
                "at": problem.at.isoformat(),
            },
        }

    @api.post("/v1/models/{name}/predict", response_model=PredictResponse, tags=["serving"], openapi_extra=DATA_PLANE)
    def predict(name: str, request: PredictRequest) -> dict[str, Any]:
        if request.entities is not None:
            pipeline = pipeline_for_model(pipelines, name)
            served_or_503(name)
            rows, features = entity_rows(pipeline, request.entities)
            return answer(name, rows, features=features, entities=request.entities)
        assert request.instances is not None
        return answer(name, request.instances)

    @api.post("/v1/models/{name}/feedback", tags=["serving"], openapi_extra=DATA_PLANE)
    def post_feedback(name: str, request: FeedbackRequest) -> dict[str, Any]:
        """Actual outcomes, by ``request_id`` (+ ``index``) or by ``entity`` (+ ``at``): stored joined with their
        predictions and announced as ``FeedbackReceived``. All rows are resolved first: one unknown → 404."""
        pipeline_for_model(pipelines, name)
        if feedback is None:
            raise HTTPException(status_code=501, detail="feedback is not configured on this replica")
        items = [
            FeedbackItem(
                actual=row.actual,
                request_id=row.request_id,
                index=row.index,
                entity=row.entity,
                at=row.at.astimezone(UTC) if row.at is not None else None,
            )
            for row in request.feedback
        ]
        try:
            accepted = feedback.receive(name, items)
        except ValidationFailed as exc:
            raise _unprocessable(exc) from None
        return {"model": name, "accepted": len(accepted), "feedback": accepted}

    @api.get("/v1/models/{name}/feedback", tags=["serving"])
    def get_feedback(name: str, limit: int = Query(default=100, ge=1, le=10_000)) -> dict[str, Any]:
        """The newest predictions with their actual outcomes (the join)."""
        pipeline_for_model(pipelines, name)
        if feedback is None:
            raise HTTPException(status_code=501, detail="feedback is not configured on this replica")
        return {"model": name, "rows": feedback.joined(name, limit)}

    # --- /v2: Open Inference Protocol -----------------------------------------------------------------------

    def v2_error(status: int, message: str, **extra: Any) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": message, **extra})

    @api.get("/v2", tags=["oip"])
    def v2_server_metadata() -> dict[str, Any]:
        return {"name": "driftloop-serving", "version": "0.1.0", "extensions": []}

    @api.get("/v2/health/live", tags=["oip"])
    def v2_live() -> dict[str, Any]:
        return {"live": True}

    @api.get("/v2/health/ready", tags=["oip"])
    def v2_ready() -> JSONResponse:
        ready = table.loaded_count() > 0
        return JSONResponse(status_code=200 if ready else 503, content={"ready": ready})

    @api.get("/v2/models/{name}", tags=["oip"])
    def v2_model_metadata(name: str) -> JSONResponse:
        try:
            pipeline = pipeline_for_model(pipelines, name)
        except NotFoundError as exc:
            return v2_error(404, str(exc))
        served = table.get(name)
        versions = [] if served is None else [str(served.version)]
        return JSONResponse(content=oip.metadata(pipeline, versions))

    @api.get("/v2/models/{name}/ready", tags=["oip"])
    def v2_model_ready(name: str) -> JSONResponse:
        try:
            pipeline_for_model(pipelines, name)
        except NotFoundError as exc:
            return v2_error(404, str(exc))
        ready = table.get(name) is not None
        return JSONResponse(status_code=200 if ready else 503, content={"name": name, "ready": ready})

    @api.post("/v2/models/{name}/infer", tags=["oip"], openapi_extra=DATA_PLANE)
    async def v2_infer(name: str, request: Request) -> JSONResponse:
        try:
            pipeline = pipeline_for_model(pipelines, name)
        except NotFoundError as exc:
            return v2_error(404, str(exc))
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return v2_error(400, f"the request body is not JSON: {exc}")
        if not isinstance(body, dict):
            return v2_error(400, "the request body must be a JSON object with 'inputs'")
        client_id = body.get("id")
        if client_id is not None and not isinstance(client_id, str):
            return v2_error(422, "id must be a string", reason="wrong_type", field="id")
        try:
            instances = oip.instances_from_inputs(body.get("inputs"), pipeline)
            oip.check_outputs(body.get("outputs"))
        except ValidationFailed as exc:
            return v2_error(422, str(exc), reason=exc.reason, field=exc.field)
        if len(instances) > MAX_INSTANCES:
            return v2_error(422, f"at most {MAX_INSTANCES} rows per request", reason="too_many_rows", field="inputs")
        try:
            # answer() is blocking (pandas, LightGBM, the producer): off the event loop.
            result = await run_in_threadpool(answer, name, instances)
        except HTTPException as exc:
            detail = exc.detail
            if isinstance(detail, dict):
                return v2_error(
                    exc.status_code, detail.get("message", ""), reason=detail.get("reason"), field=detail.get("field")
                )
            return v2_error(exc.status_code, str(detail))
        return JSONResponse(
            content=oip.response(
                result["model"], result["version"], result["request_id"], client_id, result["predictions"]
            )
        )

    return api
