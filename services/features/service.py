"""Wiring of the features service."""

from __future__ import annotations

from driftloop.clients.spark import stop_spark
from driftloop.contracts.topics import DATASET_VERSION_CREATED
from driftloop.runtime.service import ConsumerSpec, Runtime, ServiceSpec, base_app

from . import api
from .handlers import FeaturesHandlers
from .onlinestore import open_online_store
from .streamworker import stream_worker_loop

CONSUMER_GROUP = "driftloop-features"


def build(runtime: Runtime) -> ServiceSpec:
    handlers = FeaturesHandlers(runtime)
    app = base_app(runtime, "features", "Offline and online feature store, materialized with Spark.")
    app.state.context = api.Context(
        runtime.pipelines, runtime.Session, open_online_store(runtime.settings, runtime.engine)
    )
    app.include_router(api.router)
    return ServiceSpec(
        app=app,
        consumers=[ConsumerSpec(CONSUMER_GROUP, {DATASET_VERSION_CREATED: handlers.on_dataset_version_created})],
        loops=[stream_worker_loop(runtime)] if runtime.settings.features.streaming else [],
        on_stop=[stop_spark],
        # False while the online store's server (Redis, or the database) does not answer.
        ready_checks={"online_store": handlers.online.available},
    )
