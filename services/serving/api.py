"""Serving HTTP API: predict with the served champion, and what this replica serves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from driftloop.errors import ValidationFailed
from driftloop.events import Event
from driftloop.pipeline import PipelineConfig, pipeline_for_model

from . import predict as predicting
from .served import ModelTable, ServedModel

MAX_INSTANCES = 10_000


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: list[dict[str, Any]] = Field(
        min_length=1, max_length=MAX_INSTANCES, description="Raw stream fields, one object per row."
    )


class PredictResponse(BaseModel):
    model: str
    version: int
    request_id: str
    predictions: list[float]


def router(
    table: ModelTable, pipelines: dict[str, PipelineConfig], publish: Callable[[Event], None], replica: str
) -> APIRouter:
    api = APIRouter(prefix="/v1/models", tags=["serving"])

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

    @api.get("")
    def list_served() -> dict[str, Any]:
        return {"replica": replica, "models": [s.describe() for s in table.all()]}

    @api.get("/{name}")
    def describe(name: str) -> dict[str, Any]:
        served = served_or_503(name)
        problem = table.problem(name)
        return {
            **served.describe(),
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

    @api.post("/{name}/predict", response_model=PredictResponse)
    def predict(name: str, request: PredictRequest) -> dict[str, Any]:
        served = served_or_503(name)  # one reference for the whole request: a swap does not affect it
        with predicting.PREDICT_SECONDS.labels(name).time():
            try:
                return predicting.predict(served, request.instances, publish)
            except ValidationFailed as exc:
                raise HTTPException(
                    status_code=422, detail={"reason": exc.reason, "field": exc.field, "message": str(exc)}
                ) from None

    return api
