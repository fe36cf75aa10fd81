"""Wiring of the training service."""

from __future__ import annotations

import logging
import uuid

from driftloop.contracts.topics import FEATURES_MATERIALIZED, TRAINING_REQUESTED
from driftloop.runtime.service import ConsumerSpec, Runtime, ServiceSpec, base_app

from . import api
from .handlers import TrainingHandlers
from .raycluster import ensure_ray, ray_ready, shutdown_ray, warm_workers_loop

log = logging.getLogger(__name__)

CONSUMER_GROUP = "driftloop-training"
# The process's own group reading the feature sets' events whole (broadcast: no join wait, nothing committed).
FEATURES_GROUP_PREFIX = "driftloop-training-features-"


def build(runtime: Runtime) -> ServiceSpec:
    # Ray starts here, in the main thread: its GCS and raylet die with the thread that started them (Linux
    # parent-death signal), so starting them from a consumer thread would tie Ray's life to that thread.
    ensure_ray(runtime.settings)
    handlers = TrainingHandlers(runtime)
    # Before consuming: a redelivered request of an interrupted run then finds its run and makes no second one.
    interrupted = handlers.take_interrupted()
    if interrupted:
        log.warning("run(s) interrupted by a previous stop, executed again: %s", interrupted)
    app = base_app(runtime, "training", "Training runs on Ray, with provenance.")
    app.state.context = api.Context(
        runtime.settings, runtime.Session, runtime.bus.publish, handlers.store, handlers.live_log
    )
    app.include_router(api.router)
    return ServiceSpec(
        app=app,
        consumers=[
            ConsumerSpec(CONSUMER_GROUP, {TRAINING_REQUESTED: handlers.on_training_requested}, prompt=True),
            # Its own thread: a run waiting for rows after a change (in the consumer above) wakes on these.
            ConsumerSpec(
                f"{FEATURES_GROUP_PREFIX}{uuid.uuid4().hex[:12]}",
                {FEATURES_MATERIALIZED: handlers.on_features_materialized},
                broadcast=True,
                prompt=True,
            ),
        ],
        loops=[
            handlers.resume_interrupted,
            *([warm_workers_loop(runtime.settings, runtime.pipelines)] if runtime.settings.ray.warm_workers else []),
        ],
        on_stop=[shutdown_ray],
        ready_checks={"ray": ray_ready},
    )
