"""Wiring of the training service."""

from __future__ import annotations

import logging
import threading
import time
import uuid

from driftloop.contracts.events import Event
from driftloop.contracts.payloads import DatasetCutStarted, TrainingRequested
from driftloop.contracts.topics import (
    DATASET_CUT_STARTED,
    DOORBELL_RECORDS,
    FEATURES_MATERIALIZED,
    TRAINING_REQUESTED,
)
from driftloop.runtime.service import ConsumerSpec, Runtime, ServiceSpec, base_app

from . import api
from .fit import warm_fit_worker
from .handlers import TrainingHandlers
from .queues import ModelQueues
from .raycluster import note_work, ray_at_work, ray_ready, ray_state, shutdown_ray, start_ray_keeper

log = logging.getLogger(__name__)

CONSUMER_GROUP = "driftloop-training"
# The process's own group reading the feature sets' events whole (broadcast: no join wait, nothing committed).
FEATURES_GROUP_PREFIX = "driftloop-training-features-"
# As long as the service's stop joins its consumer threads.
STOP_WAIT_SECONDS = 10.0


def build(runtime: Runtime) -> ServiceSpec:
    settings = runtime.settings

    # Ray is started by a thread of its own that lives as long as the process (its GCS and raylet die with the
    # thread that started them), when work comes or the service process runs (``wake_ray_at_start``, not when a test
    # only builds the service); here only what a killed predecessor left is stopped.
    def models() -> list[tuple[str, str]]:
        return [(p.model.family, p.model.task) for p in runtime.pipelines.values()]

    start_ray_keeper(settings, models)
    # A pipeline applied is a sign of work too: its stream (and its first training) is about to come.
    runtime.pipelines.on_change(lambda: note_work(time.time()))

    # A fit of at most this many rows does not need Ray (it runs here while Ray sleeps): Ray is woken early only for
    # data that may be bigger, and not beside the cut of a small stream's first version (where its start took the
    # cut's CPU).
    local_fit_rows = settings.ray.local_fit_max_rows

    def on_woken(why: str) -> None:
        # Records arriving after a quiet spell woke the stack: a cut and a training may follow. Ray starts (or stays
        # up) while they land, seconds before the cut starts. Only on waking: a steady stream does not keep it up.
        if why == DOORBELL_RECORDS and not local_fit_rows:
            note_work(time.time())

    runtime.bus.on_doorbell(on_woken)
    handlers = TrainingHandlers(runtime)
    # Before consuming: a redelivered request of an interrupted run then finds its run and makes no second one.
    interrupted = handlers.take_interrupted()
    if interrupted:
        log.warning("run(s) interrupted by a previous stop, executed again: %s", interrupted)
    app = base_app(runtime, "training", "Training runs on Ray, with provenance.")
    app.state.context = api.Context(settings, runtime.Session, runtime.bus.publish, handlers.store, handlers.live_log)
    app.include_router(api.router)

    runs = ModelQueues()

    def on_training_requested(event: Event[TrainingRequested]) -> None:
        # The run is recorded here and executed in its model's queue: the consumer reads on (another model's request,
        # the cuts' news) while a run waits for rows after a change.
        run = handlers.accept(event)
        if run is None:
            return

        def execute() -> None:
            # Ray stays awake until the run ends; it is woken by the fit or the search that needs it (a small fit
            # does not: ray.local_fit_max_rows), or here at once when every fit needs it.
            with ray_at_work(settings, wake=not local_fit_rows):
                handlers.execute(run, event)

        runs.submit(run.model, execute)

    def wake_ray_at_start(_stop: threading.Event) -> None:
        # A service process just started is about to get work (a new stack's first stream): Ray woken only by that
        # stream's first cut made its first version answer 4 to 8 s later. Idle, it sleeps again like any Ray.
        note_work(time.time())

    def warm_fits_here(_stop: threading.Event) -> None:
        # What a fit here loads on first use (the model libraries, their metrics, matplotlib), loaded once at start
        # like Ray's warm workers: cold, the first version's 10k-row fit took 2.8 s instead of under one.
        if local_fit_rows and not settings.ray_address:
            try:
                warm_fit_worker(models())
            except Exception:  # a loop's error stops the process; a cold first fit is only slower
                log.warning("loading the fit libraries at start failed", exc_info=True)

    def on_dataset_cut_started(event: Event[DatasetCutStarted]) -> None:
        # New data: the triggers may ask for a training once it is cut and its features are materialized, seconds
        # of Spark during which Ray starts (its version's DatasetVersionCreated would come too late for that). A cut
        # taking no more rows than a fit here takes may well not need Ray.
        if event.payload.new_rows > local_fit_rows:
            note_work(event.envelope.occurred_at.timestamp())

    return ServiceSpec(
        app=app,
        consumers=[
            ConsumerSpec(
                CONSUMER_GROUP,
                {TRAINING_REQUESTED: on_training_requested, DATASET_CUT_STARTED: on_dataset_cut_started},
                prompt=True,
            ),
            # Its own thread: a run waiting for rows after a change (in its model's queue) wakes on these.
            ConsumerSpec(
                f"{FEATURES_GROUP_PREFIX}{uuid.uuid4().hex[:12]}",
                {FEATURES_MATERIALIZED: handlers.on_features_materialized},
                broadcast=True,
                prompt=True,
            ),
        ],
        loops=[wake_ray_at_start, warm_fits_here, handlers.resume_interrupted],
        # A run under way gets the time the consumers get to end (before, it ran in the joined consumer thread).
        on_stop=[lambda: runs.wait_idle(STOP_WAIT_SECONDS), shutdown_ray],
        ready_checks={"ray": ray_ready},
        health_info={"ray_state": ray_state},
    )
