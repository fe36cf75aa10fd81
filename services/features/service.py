"""Wiring of the features service."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from driftloop.clients.db import create_engine_for
from driftloop.clients.spark import start_python_workers_on_records, stop_spark, warm_spark_loop
from driftloop.contracts.topics import DATASET_VERSION_CREATED
from driftloop.runtime.service import ConsumerSpec, Runtime, ServiceSpec, base_app
from driftloop.runtime.workers import default_workers

from . import api
from .handlers import SPARK_APP, FeaturesHandlers
from .materialize import warm_materializations
from .onlinestore import open_online_store
from .streamworker import stream_worker_loop

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

CONSUMER_GROUP = "driftloop-features"


def build(runtime: Runtime) -> ServiceSpec:
    def warm_jobs(spark: SparkSession, folder: Path) -> None:
        """The warm-up's own jobs: each pipeline's materialization on made-up rows."""
        warm_materializations(spark, folder, list(runtime.pipelines.values()))

    handlers = FeaturesHandlers(runtime)
    app = base_app(runtime, "features", "Offline and online feature store, materialized with Spark.")
    # Lookups get an engine of their own, its pool as large as their threads (materialization writes elsewhere).
    lookup_engine = create_engine_for(runtime.settings.database_url, pool_size=api.LOOKUP_THREADS)
    context = api.Context(runtime.pipelines, runtime.Session, open_online_store(runtime.settings, lookup_engine))
    app.state.context = context
    app.include_router(api.router)
    if runtime.settings.spark.warm_at_start:
        # Records after a quiet spell: a materialization follows their cut; Spark's Python workers (stopped after a
        # quiet minute) start now.
        runtime.bus.on_doorbell(start_python_workers_on_records)
    return ServiceSpec(
        app=app,
        consumers=[
            ConsumerSpec(CONSUMER_GROUP, {DATASET_VERSION_CREATED: handlers.on_dataset_version_created}, prompt=True)
        ],
        loops=[
            *(
                [warm_spark_loop(runtime.settings, SPARK_APP, exercise=warm_jobs)]
                if runtime.settings.spark.warm_at_start
                else []
            ),
            *([stream_worker_loop(runtime)] if runtime.settings.features.streaming else []),
        ],
        on_stop=[stop_spark, context.answers.close, lookup_engine.dispose],
        # False while the online store's server (Redis, or the database) does not answer.
        ready_checks={"online_store": handlers.online.available},
        workers=runtime.settings.features.workers or default_workers(),
    )
