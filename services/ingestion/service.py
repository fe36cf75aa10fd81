"""Wiring of the ingestion service: Kafka intake loop, dataset-cut loop, HTTP API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from driftloop.clients.objectstore import open_object_store
from driftloop.clients.spark import start_python_workers_on_records, stop_spark, warm_spark_loop
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.errors import ConfigError
from driftloop.runtime.service import Runtime, ServiceSpec, base_app

from . import api
from .datasets import PARQUET_TIMESTAMP, SPARK_APP, DatasetCutter
from .kafka_intake import KafkaIntake
from .landing import Lander
from .outbox import DeadLetterOutbox, VersionOutbox

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def check_pipeline(cfg: PipelineConfig) -> None:
    """What the pipeline model cannot check alone: ``dataset.unique_by`` names fields of the stream."""
    unknown = sorted(set(cfg.dataset.unique_by) - set(cfg.stream.field_names))
    if unknown:
        raise ConfigError(
            f"pipeline of model {cfg.model.name!r}: dataset.unique_by names unknown field(s) {unknown}; "
            f"fields: {cfg.stream.field_names}"
        )


def check_pipelines(runtime: Runtime) -> None:
    """``check_pipeline`` on each pipeline now (the service does not start) and on each one applied later (it is
    not taken)."""
    for cfg in runtime.pipelines.values():
        check_pipeline(cfg)
    runtime.pipelines.add_check(check_pipeline)


def warm_cuts_of(runtime: Runtime) -> Callable[[SparkSession, Path], None]:
    """The warm-up's own jobs: each pipeline's cut on made-up rows (its stream and dataset settings)."""

    def exercise(spark: SparkSession, folder: Path) -> None:
        from .spark_jobs import warm_cuts

        warm_cuts(spark, folder, [(cfg.stream, cfg.dataset) for cfg in runtime.pipelines.values()])

    return exercise


def build(runtime: Runtime) -> ServiceSpec:
    check_pipelines(runtime)
    store = open_object_store(runtime.settings)
    lander = Lander(runtime.bus, store, producer=runtime.name)
    cutter = DatasetCutter(runtime.settings, runtime.pipelines, runtime.bus, store)
    # Dead letters and dataset versions whose event the broker never acknowledged are published again (outbox.py).
    dead_letter_outbox = DeadLetterOutbox(runtime.bus.Session, runtime.bus, producer=runtime.name)
    version_outbox = VersionOutbox(runtime.bus.Session, runtime.bus, runtime.pipelines)
    intake = KafkaIntake(runtime.bus, runtime.pipelines, lander, on_landed=cutter.request_check)
    runtime.pipelines.on_change(intake.pipelines_changed)  # a pipeline applied live: its topic is subscribed
    app = base_app(runtime, "ingestion", "Stream intake, validation, dead letters, landing and dataset versions.")
    app.state.context = api.Context(runtime.pipelines, lander, intake, cutter)
    app.include_router(api.router)
    app.state.ingestion = {
        "lander": lander,
        "intake": intake,
        "cutter": cutter,
        "dead_letter_outbox": dead_letter_outbox,
        "version_outbox": version_outbox,
    }
    warm = runtime.settings.spark.warm_at_start
    if warm:
        # Records after a quiet spell: a cut follows; Spark's Python workers (stopped after a quiet minute) start now.
        runtime.bus.on_doorbell(start_python_workers_on_records)
    return ServiceSpec(
        app=app,
        loops=[
            intake.run,
            cutter.loop,
            dead_letter_outbox.drain_loop,
            version_outbox.drain_loop,
            *([warm_spark_loop(runtime.settings, SPARK_APP, PARQUET_TIMESTAMP, warm_cuts_of(runtime))] if warm else []),
        ],
        on_stop=[stop_spark],
        ready_checks={"kafka_assigned": lambda: intake.assigned},
    )
