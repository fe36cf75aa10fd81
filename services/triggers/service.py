"""Wiring of the triggers service."""

from __future__ import annotations

from functools import partial
from typing import Any

from driftloop.clients.credentials import client_token
from driftloop.clients.http import ServiceClient
from driftloop.contracts.settings import Settings
from driftloop.contracts.topics import (
    DATASET_VERSION_CREATED,
    DRIFT_DETECTED,
    EXTERNAL_TRIGGER,
    FEATURES_MATERIALIZED,
    FEEDBACK_RECEIVED,
    MODEL_PROMOTED,
    MODEL_REJECTED,
    PERFORMANCE_DEGRADED,
    RUN_STATE_CHANGED,
)
from driftloop.runtime.service import ConsumerSpec, Runtime, ServiceSpec, base_app

from . import api
from .handlers import Rollback, TriggerHandlers
from .outbox import request_outbox
from .reconcile import state_reconcile

CONSUMER_GROUP = "driftloop-triggers"
# A rollback is one alias move: the registry answers quickly or not at all.
REGISTRY_TIMEOUT_SECONDS = 10.0


def registry_rollback(settings: Settings) -> Rollback:
    """The guard's rollback: the registry's ``POST /v1/models/{name}/rollback`` (admin token read per call)."""
    registry = ServiceClient(
        "registry", settings, token=partial(client_token, settings), timeout=REGISTRY_TIMEOUT_SECONDS, retries=0
    )

    def rollback(model: str, to: int, reason: str) -> dict[str, Any]:
        answer: dict[str, Any] = registry.post(f"/v1/models/{model}/rollback", json={"to": to, "reason": reason})
        return answer

    return rollback


def build(runtime: Runtime) -> ServiceSpec:
    handlers = TriggerHandlers(
        pipelines=runtime.pipelines,
        Session=runtime.Session,
        publish=runtime.bus.publish,
        producer=runtime.name,
        rollback=registry_rollback(runtime.settings),
    )
    app = base_app(
        runtime,
        "triggers",
        "Turns schedules, new data, labels, performance, drift and external causes into training requests.",
    )
    app.state.context = api.Context(handlers)
    app.include_router(api.router)
    # One consumer: decisions depend on state events, handled in one thread in arrival order.
    consumer = ConsumerSpec(
        CONSUMER_GROUP,
        {
            FEATURES_MATERIALIZED: handlers.on_features_materialized,
            DRIFT_DETECTED: handlers.on_drift_detected,
            EXTERNAL_TRIGGER: handlers.on_external_trigger,
            MODEL_PROMOTED: handlers.on_model_promoted,
            MODEL_REJECTED: handlers.on_model_rejected,
            RUN_STATE_CHANGED: handlers.on_run_state_changed,
            DATASET_VERSION_CREATED: handlers.on_dataset_version_created,
            FEEDBACK_RECEIVED: handlers.on_feedback_received,
            PERFORMANCE_DEGRADED: handlers.on_performance_degraded,
        },
        prompt=True,
    )
    # At start, the champion and the runs held as active, checked with their owners (the bus may have lost news).
    reconcile, close_clients = state_reconcile(runtime.settings, handlers, runtime.Session, runtime.pipelines)
    # Requests training was not seen to have are sent again once per life of the broker's topic (outbox.py).
    outbox, close_outbox = request_outbox(runtime.settings, runtime.Session, runtime.bus, runtime.name)
    return ServiceSpec(
        app=app,
        consumers=[consumer],
        loops=[handlers.schedule_loop, reconcile, outbox.drain_loop],
        on_stop=[close_clients, close_outbox],
    )
