"""Wiring of the monitor service."""

from __future__ import annotations

from driftloop.clients.objectstore import open_object_store
from driftloop.contracts.topics import FEEDBACK_RECEIVED, MODEL_PROMOTED, PREDICTION_LOGGED, Topic
from driftloop.runtime.bus import EventHandler
from driftloop.runtime.retention import purge_loop
from driftloop.runtime.service import Runtime, ServiceSpec, base_app

from . import api, retention
from .champion import champion_reconcile
from .handlers import MonitorHandlers
from .streaming import FaustEngine

# The faust agent's group, used by nothing else: the embedded broker keeps an empty group's assignor protocol, so a
# faust member joining a group a confluent-kafka consumer used is refused (InconsistentGroupProtocolError; see
# streaming.py).
CONSUMER_GROUP = "driftloop-monitor-faust"


def build(runtime: Runtime) -> ServiceSpec:
    handlers = MonitorHandlers(
        pipelines=runtime.pipelines,
        Session=runtime.Session,
        store=open_object_store(runtime.settings),
        publish=runtime.bus.publish,
        producer=runtime.name,
    )
    # At start, the champion as the registry says it (the bus may have lost its promotion); so for each model
    # applied later, when it arrives; and when a prediction of a version not watched comes before its promotion.
    reconcile, applied, ask_champion, close_registry = champion_reconcile(
        runtime.settings, runtime.Session, handlers.on_model_promoted, runtime.pipelines
    )
    handlers.ask_champion = ask_champion
    app = base_app(runtime, "monitor", "Drift, data quality and performance of served predictions.")
    app.state.context = api.Context(handlers)
    app.include_router(api.router)
    # One agent for the three topics: promotions and predictions of a model share the model key.
    by_topic: dict[Topic, EventHandler] = {
        MODEL_PROMOTED: handlers.on_model_promoted,
        PREDICTION_LOGGED: handlers.on_prediction_logged,
        FEEDBACK_RECEIVED: handlers.on_feedback_received,
    }
    app.state.monitor = handlers
    engine = FaustEngine(runtime.bus, CONSUMER_GROUP, by_topic)
    purge = purge_loop(
        "monitor",
        lambda: retention.purge(runtime.engine, runtime.settings, runtime.pipelines),
        runtime.settings.database.purge_interval_seconds,
    )
    # The agent's processed-event ids are this service's to purge (bus consumers purge their own).
    processed_ids = purge_loop(
        "monitor-faust",
        lambda: {"processed_events": runtime.bus.purge_processed([CONSUMER_GROUP])},
        runtime.settings.database.purge_interval_seconds,
    )
    runtime.pipelines.on_change(applied.changed)
    return ServiceSpec(
        app=app,
        loops=[engine.run, purge, processed_ids, reconcile, applied.run],
        on_stop=[close_registry],
        ready_checks={"faust_agent_started": engine.started.is_set},
        health_info={
            "faust_handled": lambda: engine.handled,
            "faust_failed": lambda: engine.failed,
            "faust_restarts": lambda: engine.restarts,
        },
    )
