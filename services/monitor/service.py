"""Wiring of the monitor service."""

from __future__ import annotations

from driftloop.objectstore import open_object_store
from driftloop.service import ConsumerSpec, Runtime, ServiceSpec, base_app
from driftloop.topics import FEEDBACK_RECEIVED, MODEL_PROMOTED, PREDICTION_LOGGED

from .api import router
from .handlers import MonitorHandlers

CONSUMER_GROUP = "driftloop-monitor"


def build(runtime: Runtime) -> ServiceSpec:
    handlers = MonitorHandlers(
        pipelines=runtime.pipelines,
        Session=runtime.Session,
        store=open_object_store(runtime.settings),
        publish=runtime.bus.publish,
        producer=runtime.name,
    )
    app = base_app(runtime, "monitor", "Drift, data quality and performance of served predictions.")
    app.include_router(router(runtime, handlers))
    # One consumer for both topics: promotions and predictions of a model share the model key.
    consumer = ConsumerSpec(
        CONSUMER_GROUP,
        {
            MODEL_PROMOTED: handlers.on_model_promoted,
            PREDICTION_LOGGED: handlers.on_prediction_logged,
            FEEDBACK_RECEIVED: handlers.on_feedback_received,
        },
    )
    app.state.monitor = handlers
    return ServiceSpec(app=app, consumers=[consumer])
