"""Serving HTTP API: ``/v1`` (driftloop's own: inline instances or entity keys, feedback) and ``/v2`` (the Open
Inference Protocol, KServe v2), both answered by the served champion (or its challenger during a rollout)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import pandas as pd
import pydantic_core
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, Match

from driftloop.contracts import oip
from driftloop.contracts.bounds import Count, Name, Text
from driftloop.contracts.events import Event
from driftloop.contracts.payloads import Payload
from driftloop.contracts.pipeline import PipelineConfig, pipeline_for_model
from driftloop.errors import (
    BadRequest,
    DriftloopError,
    NotFoundError,
    ServiceError,
    ServiceUnavailable,
    ValidationFailed,
)
from driftloop.runtime.service import ErrorBody, api_context

from . import predict as predicting
from .feedback import FeedbackDesk, FeedbackItem, PredictionRecorder
from .predlog import PredictionLog
from .rollout import RolloutController
from .served import ModelTable, ServedModel

MAX_INSTANCES = oip.MAX_ROWS
# An entity key or a request id: text of at most 200 characters.
Key = Annotated[Text, Field(max_length=200)]
# Requests up to this many rows on the pandas-free path are scored on the event loop (tens of microseconds: less
# than a trip through the thread pool costs); bigger ones, the DataFrame path and entity lookups (I/O) take one
# trip through the thread pool, never more.
INLINE_MAX_ROWS = 32
MAX_FEEDBACK = 10_000

EntityLookup = Callable[[str, list[str]], tuple[dict[str, dict[str, Any]], list[str]]]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: list[dict[str, Any]] | None = Field(
        default=None, min_length=1, max_length=MAX_INSTANCES, description="Raw stream fields, one object per row."
    )
    entities: list[Key] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_INSTANCES,
        description="Entity keys: each row's features are the entity's latest values in the online store.",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_of(cls, data: Any) -> Any:
        if isinstance(data, dict) and (data.get("instances") is not None) == (data.get("entities") is not None):
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
    request_id: Key | None = Field(default=None, description="The request_id of the prediction ...")
    index: Count = Field(default=0, description="... and the row within that request.")
    entity: Key | None = Field(default=None, description="Or the entity: its newest prediction at or before 'at'.")
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


@dataclass(frozen=True)
class Context:
    """What the routes need; ``service.build`` puts it on ``app.state.context``. Feedback and entity lookups are
    optional (a replica without them answers 501 on those routes). Answered rows go to ``prediction_log``
    (``publish`` is its default sink; its loop is the service's, a test flushes it)."""

    table: ModelTable
    pipelines: Mapping[str, PipelineConfig]
    publish: Callable[[Event[Payload]], None]
    replica: str
    rollouts: RolloutController | None = None
    recorder: PredictionRecorder | None = None
    feedback: FeedbackDesk | None = None
    lookup_entities: EntityLookup | None = None
    prediction_log: PredictionLog = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.prediction_log is None:
            object.__setattr__(self, "prediction_log", PredictionLog(self.publish, self.pipelines, self.recorder))


Ctx = Annotated[Context, Depends(api_context)]

router = APIRouter()


def not_configured(what: str) -> ServiceError:
    # No class of the tree names 501; ServiceError carries any status.
    return ServiceError(f"{what} not configured on this replica", status_code=501, code="not_configured")


def served_or_503(ctx: Context, name: str) -> ServedModel:
    pipeline_for_model(ctx.pipelines, name)  # unknown model: NotFoundError → 404
    served = ctx.table.get(name)
    if served is None:
        problem = ctx.table.problem(name)
        detail = f"model {name!r} has no version loaded yet on this replica: waiting for a promotion"
        if problem is not None:
            detail += f" (v{problem.version} was refused: {problem.reason})"
        raise ServiceUnavailable(detail, code="model_not_loaded")
    return served


def answer(
    ctx: Context,
    name: Name,
    instances: list[dict[str, Any]],
    *,
    features: pd.DataFrame | None = None,
    entities: list[str] | None = None,
) -> dict[str, Any]:
    """Score with the champion, or the arm a running rollout picks; ValidationFailed (422) for the client's
    mistakes."""
    served = served_or_503(ctx, name)  # one reference for the whole request: a swap does not affect it
    rollouts = ctx.rollouts
    rollout = rollouts.get(name) if rollouts is not None else None

    def score(model: ServedModel, rows: list[dict[str, Any]], log_it: bool) -> dict[str, Any]:
        result = predicting.predict(model, rows, features=features, entities=entities)
        if log_it:  # shadow copies log nothing: PredictionLogged is what clients were answered
            ctx.prediction_log.submit(result)
        return result

    with predicting.PREDICT_SECONDS.labels(name).time():
        if rollout is None or rollouts is None:
            return score(served, instances, True)
        return rollouts.predict(rollout, instances, score)


def entity_rows(
    ctx: Context, pipeline: PipelineConfig, entities: list[str]
) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    if ctx.lookup_entities is None:
        raise not_configured("entity lookups are")
    # The online store not answering: OnlineStoreUnavailable (503).
    values, missing = ctx.lookup_entities(pipeline.stream.name, list(dict.fromkeys(entities)))
    if missing:
        raise ValidationFailed(
            "unknown_entity",
            "entities",
            f"no online features for entit{'y' if len(missing) == 1 else 'ies'} {missing[:20]} "
            f"in stream {pipeline.stream.name!r}",
        )
    rows = [dict(values[e]) for e in entities]
    features = pd.DataFrame(rows).reindex(columns=pipeline.feature_names)
    for spec in pipeline.features:
        if spec.kind == "numeric":
            features[spec.name] = pd.to_numeric(features[spec.name], errors="coerce").astype("float64")
    return rows, features


def describe_one(ctx: Context, served: ServedModel) -> dict[str, Any]:
    out = served.describe()
    rollout = ctx.rollouts.get(served.model) if ctx.rollouts is not None else None
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


# --- /v1 ----------------------------------------------------------------------------------------------------


@router.get("/v1/models", tags=["serving"])
def list_served(ctx: Ctx) -> dict[str, Any]:
    return {"replica": ctx.replica, "models": [describe_one(ctx, s) for s in ctx.table.all()]}


@router.get("/v1/models/{name}", tags=["serving"])
def describe(ctx: Ctx, name: Name) -> dict[str, Any]:
    served = served_or_503(ctx, name)
    problem = ctx.table.problem(name)
    return {
        **describe_one(ctx, served),
        "replica": ctx.replica,
        "last_refused": None
        if problem is None
        else {
            "version": problem.version,
            "sha256": problem.sha256,
            "reason": problem.reason,
            "at": problem.at.isoformat(),
        },
    }


def answers_inline(ctx: Context, name: str, instances: list[dict[str, Any]]) -> bool:
    """Whether ``answer`` may run on the event loop (see ``INLINE_MAX_ROWS``)."""
    served = ctx.table.get(name)
    return served is not None and served.encoder is not None and len(instances) <= INLINE_MAX_ROWS


async def answer_async(ctx: Context, name: str, instances: list[dict[str, Any]]) -> dict[str, Any]:
    await ctx.prediction_log.room(len(instances))  # answers wait for logging to keep up, never dropped
    if answers_inline(ctx, name, instances):
        return answer(ctx, name, instances)
    return await run_in_threadpool(answer, ctx, name, instances)


def answer_entities(ctx: Context, name: str, entities: list[str]) -> dict[str, Any]:
    pipeline = pipeline_for_model(ctx.pipelines, name)
    served_or_503(ctx, name)
    rows, features = entity_rows(ctx, pipeline, entities)
    return answer(ctx, name, rows, features=features, entities=entities)


def json_response(content: dict[str, Any]) -> Response:
    return Response(pydantic_core.to_json(content), media_type="application/json")


def parse_predict_request(body: bytes) -> PredictRequest:
    """The body parsed and validated in one step (pydantic's JSON parser); its errors are FastAPI's usual 422.
    A body of exactly ``{"instances": [objects...]}`` (the common case) is only parsed: its shape is all the model
    would check (``_instances_only``)."""
    request = _instances_only(body)
    if request is not None:
        return request
    try:
        return PredictRequest.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)], body=body
        ) from None


def _instances_only(body: bytes) -> PredictRequest | None:
    """``{"instances": [...]}`` with 1 to ``MAX_INSTANCES`` objects, parsed by pydantic-core's JSON parser (as the
    model's own parsing reads it: NaN and big integers alike) without the model's validation, which would build
    every row's dict a second time; None for any other body (the model validates it, with its errors)."""
    try:
        data = pydantic_core.from_json(body)
    except ValueError:
        return None
    if type(data) is not dict or len(data) != 1:
        return None
    instances = data.get("instances")
    if type(instances) is not list or not 1 <= len(instances) <= MAX_INSTANCES:
        return None
    if not all(type(instance) is dict for instance in instances):
        return None
    return PredictRequest.model_construct(instances=instances)


# The body is read by the route itself (parse_predict_request): documented here.
PREDICT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    },
}


@router.post(
    "/v1/models/{name}/predict", response_model=PredictResponse, tags=["serving"], openapi_extra=PREDICT_OPENAPI
)
async def predict(ctx: Ctx, name: Name, raw: Request) -> Response:
    return await predict_core(ctx, name, raw)


async def predict_core(ctx: Context, name: str, raw: Request) -> Response:
    request = parse_predict_request(await raw.body())
    if request.entities is not None:
        await ctx.prediction_log.room(len(request.entities))
        result = await run_in_threadpool(answer_entities, ctx, name, request.entities)  # the online store: I/O
    else:
        assert request.instances is not None
        result = await answer_async(ctx, name, request.instances)
    return json_response(
        {
            "model": result["model"],
            "version": result["version"],
            "request_id": result["request_id"],
            "predictions": result["predictions"],
        }
    )


@router.post("/v1/models/{name}/feedback", tags=["serving"])
def post_feedback(ctx: Ctx, name: Name, request: FeedbackRequest) -> dict[str, Any]:
    """Actual outcomes, by ``request_id`` (+ ``index``) or by ``entity`` (+ ``at``): stored joined with their
    predictions and announced as ``FeedbackReceived``. All rows are resolved first: one unknown → 404."""
    pipeline_for_model(ctx.pipelines, name)
    if ctx.feedback is None:
        raise not_configured("feedback is")
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
    accepted = ctx.feedback.receive(name, items)  # a row the model cannot take: ValidationFailed (422)
    return {"model": name, "accepted": len(accepted), "feedback": accepted}


@router.get("/v1/models/{name}/feedback", tags=["serving"])
def get_feedback(ctx: Ctx, name: Name, limit: int = Query(default=100, ge=1, le=10_000)) -> dict[str, Any]:
    """The newest predictions with their actual outcomes (the join)."""
    pipeline_for_model(ctx.pipelines, name)
    if ctx.feedback is None:
        raise not_configured("feedback is")
    return {"model": name, "rows": ctx.feedback.joined(name, limit)}


# --- /v2: Open Inference Protocol ---------------------------------------------------------------------------
# The protocol has its own error body, {"error": message} (+ reason and field for a bad input): /v2 routes
# answer the tree's errors themselves.


class V2Error(BaseModel):
    """The Open Inference Protocol's error body (+ reason and field for an input that does not fit)."""

    error: str
    reason: str | None = None
    field: str | None = None


class V2Readiness(BaseModel):
    """A readiness answer (503 while no model is loaded)."""

    ready: bool
    name: str | None = None


V2_ERRORS: dict[int | str, dict[str, Any]] = {
    **{status: {"model": V2Error} for status in (400, 404)},
    503: {"model": V2Readiness | V2Error},
    422: {"model": V2Error | ErrorBody},  # the protocol's, or the platform's for a malformed path
}
# The body of an inference request (read by v2_request, whose errors are the protocol's).
INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "inputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype", "data"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                                    "datatype": {"type": "string"},
                                    "data": {"type": "array"},
                                },
                            },
                        },
                        "outputs": {"type": "array", "items": {"type": "object"}},
                    },
                }
            }
        },
    }
}


def v2_error_of(exc: DriftloopError) -> JSONResponse:
    status, body = oip.error_body(exc)
    return JSONResponse(status_code=status, content=body)


@router.get("/v2", tags=["oip"])
def v2_server_metadata() -> dict[str, Any]:
    return {"name": "driftloop-serving", "version": "0.1.0", "extensions": []}


@router.get("/v2/health/live", tags=["oip"])
def v2_live() -> dict[str, Any]:
    return {"live": True}


@router.get("/v2/health/ready", tags=["oip"], responses=V2_ERRORS)
def v2_ready(ctx: Ctx) -> JSONResponse:
    ready = ctx.table.loaded_count() > 0
    return JSONResponse(status_code=200 if ready else 503, content={"ready": ready})


def loaded_versions(ctx: Context, name: str) -> list[ServedModel]:
    """What this replica can answer with for ``name``: the champion, and the challenger of a running rollout."""
    served = ctx.table.get(name)
    rollout = ctx.rollouts.get(name) if ctx.rollouts is not None else None
    loaded = [] if served is None else [served]
    if rollout is not None and all(s.version != rollout.challenger.version for s in loaded):
        loaded.append(rollout.challenger)
    return loaded


def loaded_version(ctx: Context, name: str, version: str) -> ServedModel:
    """The loaded ``version`` of ``name``; NotFoundError (404) if this replica does not hold it."""
    loaded = loaded_versions(ctx, name)
    for served in loaded:
        if str(served.version) == version:
            return served
    held = [str(s.version) for s in loaded]
    raise NotFoundError(
        f"model {name!r} version {version!r} is not loaded on this replica (loaded: {held or 'none'}): "
        "the champion and a canary's challenger are"
    )


@router.get("/v2/models/{name}", tags=["oip"], responses=V2_ERRORS)
def v2_model_metadata(ctx: Ctx, name: Name) -> JSONResponse:
    try:
        pipeline = pipeline_for_model(ctx.pipelines, name)
    except NotFoundError as exc:
        return v2_error_of(exc)
    versions = [str(s.version) for s in loaded_versions(ctx, name)]
    return JSONResponse(content=oip.metadata(pipeline, versions))


@router.get("/v2/models/{name}/ready", tags=["oip"], responses=V2_ERRORS)
def v2_model_ready(ctx: Ctx, name: Name) -> JSONResponse:
    try:
        pipeline_for_model(ctx.pipelines, name)
    except NotFoundError as exc:
        return v2_error_of(exc)
    ready = ctx.table.get(name) is not None
    return JSONResponse(status_code=200 if ready else 503, content={"name": name, "ready": ready})


@router.get("/v2/models/{name}/versions/{version}", tags=["oip"], responses=V2_ERRORS)
def v2_version_metadata(ctx: Ctx, name: Name, version: Name) -> JSONResponse:
    try:
        pipeline = pipeline_for_model(ctx.pipelines, name)
        served = loaded_version(ctx, name, version)
    except NotFoundError as exc:
        return v2_error_of(exc)
    return JSONResponse(content=oip.metadata(pipeline, [str(served.version)]))


@router.get("/v2/models/{name}/versions/{version}/ready", tags=["oip"], responses=V2_ERRORS)
def v2_version_ready(ctx: Ctx, name: Name, version: Name) -> JSONResponse:
    """200 when this replica holds the version; a 4xx (404) is the protocol's "not ready"."""
    try:
        pipeline_for_model(ctx.pipelines, name)
        loaded_version(ctx, name, version)
    except NotFoundError as exc:
        return v2_error_of(exc)
    return JSONResponse(content={"name": name, "version": version, "ready": True})


async def v2_request(request: Request, pipeline: PipelineConfig) -> oip.InferenceRequest:
    """An inference request, decoded by the protocol's contract (``driftloop.contracts.oip``, which an exported
    model's server shares): BadRequest (400) or ValidationFailed (422) for one that does not fit."""
    try:
        body = pydantic_core.from_json(await request.body())
    except ValueError as exc:
        raise BadRequest(f"the request body is not JSON: {exc}") from None
    return oip.decode_request(body, pipeline, MAX_INSTANCES)


def v2_answer(result: dict[str, Any], infer: oip.InferenceRequest) -> Response:
    return json_response(
        oip.response(
            result["model"],
            result["version"],
            result["request_id"],
            infer.client_id,
            result["predictions"],
            infer.outputs,
        )
    )


@router.post("/v2/models/{name}/infer", tags=["oip"], responses=V2_ERRORS, openapi_extra=INFER_BODY)
async def v2_infer(ctx: Ctx, name: Name, request: Request) -> Response:
    """Answered by the champion, or the arm a running rollout picks."""
    return await v2_infer_core(ctx, name, request)


async def v2_infer_core(ctx: Context, name: str, request: Request) -> Response:
    try:
        pipeline = pipeline_for_model(ctx.pipelines, name)
        infer = await v2_request(request, pipeline)
        result = await answer_async(ctx, name, infer.instances)
    except DriftloopError as exc:
        return v2_error_of(exc)
    return v2_answer(result, infer)


def answer_with(ctx: Context, served: ServedModel, instances: list[dict[str, Any]]) -> dict[str, Any]:
    """Score with exactly ``served`` (a version the client named: outside any rollout's split) and log it."""
    with predicting.PREDICT_SECONDS.labels(served.model).time():
        result = predicting.predict(served, instances)
    ctx.prediction_log.submit(result)
    return result


@router.post("/v2/models/{name}/versions/{version}/infer", tags=["oip"], responses=V2_ERRORS, openapi_extra=INFER_BODY)
async def v2_version_infer(ctx: Ctx, name: Name, version: Name, request: Request) -> Response:
    """Answered by the named version if this replica holds it (the champion, or a canary's challenger)."""
    try:
        pipeline = pipeline_for_model(ctx.pipelines, name)
        served = loaded_version(ctx, name, version)
        infer = await v2_request(request, pipeline)
        await ctx.prediction_log.room(len(infer.instances))
        if served.encoder is not None and len(infer.instances) <= INLINE_MAX_ROWS:
            result = answer_with(ctx, served, infer.instances)
        else:
            result = await run_in_threadpool(answer_with, ctx, served, infer.instances)
    except DriftloopError as exc:
        return v2_error_of(exc)
    return v2_answer(result, infer)


# --- the data plane's shortcut ------------------------------------------------------------------------------


class DataPlaneRoute(BaseRoute):
    """``POST /v1/models/{name}/predict`` or ``POST /v2/models/{name}/infer`` dispatched straight to the route's
    own code (``predict_core``, ``v2_infer_core``): matched by splitting the path, no dependency resolution.
    FastAPI's route machinery costs more than scoring a row (a profile: about 3/4 of a one-row request). What is
    skipped is nothing for these routes: the context is read the same way, and the token check has nothing to do
    on a public route (it never refuses one). Errors travel the same way (the app's handlers render them); the
    documented routes stay (OpenAPI, and an app without ``install_data_plane``)."""

    def __init__(self, version: str, action: str, core: Callable[[Context, str, Request], Any]) -> None:
        self.version, self.action, self.core = version, action, core
        self.path = f"/{version}/models/{{name}}/{action}"  # the template: metrics label requests with it

    def matches(self, scope: Any) -> tuple[Match, dict[str, Any]]:
        if scope["type"] != "http" or scope["method"] != "POST":
            return Match.NONE, {}
        parts = scope["path"].split("/")
        if len(parts) == 5 and parts[4] == self.action and parts[1] == self.version and parts[2] == "models":
            return (Match.FULL, {"route": self, "path_params": {"name": parts[3]}}) if parts[3] else (Match.NONE, {})
        return Match.NONE, {}

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        response = await self.core(request.app.state.context, scope["path_params"]["name"], request)
        await response(scope, receive, send)


def install_data_plane(app: Any) -> None:
    """Put the data plane's shortcuts first among ``app``'s routes (after ``app.include_router(router)``)."""
    app.router.routes[0:0] = [
        DataPlaneRoute("v1", "predict", predict_core),
        DataPlaneRoute("v2", "infer", v2_infer_core),
    ]
