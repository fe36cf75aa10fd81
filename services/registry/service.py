"""Wiring of the registry service."""

from __future__ import annotations

from functools import partial

from driftloop.clients.objectstore import open_object_store
from driftloop.contracts.topics import ROLLOUT_ROLLED_BACK, TRAINING_COMPLETED
from driftloop.runtime.service import ConsumerSpec, Runtime, ServiceSpec, base_app
from driftloop.runtime.warmup import warm_models_loop

from . import api
from .gate import warm_score
from .handlers import RegistryHandlers
from .outbox import Outbox
from .repository import Registry
from .runs import training_client, training_run

CONSUMER_GROUP = "driftloop-registry"


def build(runtime: Runtime) -> ServiceSpec:
    registry = Registry(runtime.Session)
    training = training_client(runtime.settings)
    handlers = RegistryHandlers(
        runtime.bus,
        registry,
        open_object_store(runtime.settings),
        runtime.pipelines,
        run_details=partial(training_run, training),
    )
    app = base_app(runtime, "registry", "Model versions with lineage, the promotion gate, and the champion alias.")
    app.state.context = api.Context(registry, handlers)
    app.include_router(api.router)
    return ServiceSpec(
        app=app,
        consumers=[
            ConsumerSpec(
                CONSUMER_GROUP,
                {
                    TRAINING_COMPLETED: handlers.on_training_completed,
                    ROLLOUT_ROLLED_BACK: handlers.on_rollout_rolled_back,
                },
                prompt=True,
            )
        ],
        # Events stored with their state but never acknowledged by the broker are published again, continuously.
        loops=[
            Outbox(runtime.Session, runtime.bus).drain_loop,
            # The first gate finds the model libraries and the metric imported.
            warm_models_loop("registry", runtime.pipelines, also=warm_score),
        ],
        on_stop=[training.close],
    )
