"""Wiring of the serving service."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable
from functools import partial

from driftloop.clients.credentials import client_token
from driftloop.clients.http import ServiceClient
from driftloop.clients.objectstore import open_object_store
from driftloop.contracts.topics import MODEL_PROMOTED, ROLLOUT_ROLLED_BACK
from driftloop.runtime.retention import purge_loop
from driftloop.runtime.service import ConsumerSpec, Runtime, ServiceSpec, base_app
from driftloop.runtime.warmup import warm_models_loop

from . import api, retention
from .champions import ChampionReconciler, PromotionCheck, RegistryChampions
from .feedback import FeedbackDesk, PredictionRecorder
from .handlers import promotion_handler, rollback_handler
from .loader import PromotionFollower
from .online import OnlineStoreClient
from .predlog import BusWire, PredictionLog
from .rollout import RolloutController
from .served import ModelTable

GROUP_PREFIX = "driftloop-serving-"
# How long one producer poll of the delivery-report loop waits for a report: it returns as soon as one comes, so
# this only bounds how long a stop (or a replaced producer) waits for the loop to notice.
DELIVERY_REPORT_WAIT_SECONDS = 1.0


def delivery_reports(runtime: Runtime) -> Callable[[threading.Event], None]:
    """Predictions are published without waiting; their delivery reports (which write the event log and count
    them) are served by producer polls. This loop waits in a poll for the next report (served as it arrives), so
    the last predictions of a quiet replica are not left unreported until the next request, and a replica at rest
    does not wake up to poll for nothing."""

    def serve_delivery_reports(stop_event: threading.Event) -> None:
        while not stop_event.is_set():
            runtime.bus.producer.poll(DELIVERY_REPORT_WAIT_SECONDS)

    return serve_delivery_reports


def follow_the_registry(
    runtime: Runtime, spec: ServiceSpec, table: ModelTable, rollouts: RolloutController, follower: PromotionFollower
) -> None:
    """The registry is the truth (``champions``): every promotion is checked against it before it is loaded, and
    each model's champion is loaded from it at start and after any gap. Readiness waits for the champions."""
    settings = runtime.settings
    if not settings.serving.verify_with_registry:
        return
    client = ServiceClient("registry", settings, token=partial(client_token, settings), timeout=10.0, retries=1)
    registry = RegistryChampions(client)
    check = PromotionCheck(registry, table)
    reconciler = ChampionReconciler(
        registry,
        check,
        table,
        rollouts,
        follower.on_model_promoted,
        runtime.pipelines,
        settings.serving.reconcile_interval_seconds,
    )
    check.on_stale = reconciler.wake  # a promotion it could not serve: ask the registry at once
    # A model applied live: its champion (a promotion ignored before its pipeline arrived) loaded at once.
    runtime.pipelines.on_change(reconciler.wake)
    follower.check = check
    spec.loops.append(reconciler.run)
    spec.on_stop.append(registry.close)
    spec.ready_checks["champions_loaded"] = lambda: reconciler.not_ready_because() is None
    spec.health_info["registry"] = reconciler.describe
    spec.health_info["last_refused"] = check.describe_last_refused


def build(runtime: Runtime) -> ServiceSpec:
    instance = uuid.uuid4().hex[:12]
    replica = f"{socket.gethostname()}-{os.getpid()}-{instance}"
    # A fresh group per process start: every replica replays the promotion history from the earliest offset
    # and ends on the current champion, independently of the others.
    group = f"{GROUP_PREFIX}{instance}"
    table = ModelTable()
    publish = runtime.bus.publish
    publish_now = partial(publish, wait=False)
    rollouts = RolloutController(table, publish_now, replica)
    follower = PromotionFollower(
        table, open_object_store(runtime.settings), runtime.pipelines, publish, replica, rollouts=rollouts
    )
    recorder = PredictionRecorder(runtime.engine, replica)
    # A request's events are encoded and handed to the producer together (``BusWire``); their delivery reports are
    # served once per logged request (``poll``), not once per row.
    prediction_log = PredictionLog(
        partial(publish, wait=False, poll=False),
        runtime.pipelines,
        recorder,
        poll=lambda timeout: runtime.bus.producer.poll(timeout),
        wire=BusWire(runtime.bus),
    )
    feedback = FeedbackDesk(runtime.engine, recorder, publish, flush_answers=prediction_log.flush)
    online = OnlineStoreClient(runtime.settings)
    app = base_app(runtime, "serving", "Online predictions with the champion model, hot-swapped on promotion.")
    app.state.model_table = table
    app.state.follower = follower
    app.state.rollouts = rollouts
    app.state.context = api.Context(
        table,
        runtime.pipelines,
        publish_now,
        replica,
        rollouts=rollouts,
        recorder=recorder,
        feedback=feedback,
        lookup_entities=online.lookup,
        prediction_log=prediction_log,
    )
    app.include_router(api.router)
    api.install_data_plane(app)
    spec = ServiceSpec(
        app=app,
        consumers=[
            ConsumerSpec(
                group,
                {MODEL_PROMOTED: promotion_handler(follower), ROLLOUT_ROLLED_BACK: rollback_handler(rollouts)},
                broadcast=True,  # the replica's own group: it reads the topics whole, no membership
                prompt=True,
            )
        ],
        loops=[
            follower.run,
            # The first champion's load finds its model library imported.
            warm_models_loop("serving", runtime.pipelines),
            prediction_log.run,
            recorder.run,
            delivery_reports(runtime),
            # Every replica purges (idempotent deletes): no replica is special.
            purge_loop(
                "serving",
                partial(retention.purge, runtime.engine, runtime.settings),
                runtime.settings.database.purge_interval_seconds,
            ),
        ],
        # Requests answered while the server was stopping: logged before the bus closes.
        on_stop=[rollouts.close, online.close, prediction_log.flush, recorder.flush],
        health_info={
            "replica": lambda: replica,
            "models_loaded": table.loaded_count,
            "served": lambda: {s.model: s.version for s in table.all()},
            "rollouts": lambda: {r.model: {"version": r.challenger.version, "share": r.share} for r in rollouts.all()},
        },
    )
    follow_the_registry(runtime, spec, table, rollouts, follower)
    return spec
