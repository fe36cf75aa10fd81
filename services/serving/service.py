"""Wiring of the serving service."""

from __future__ import annotations

import os
import socket
import uuid
from functools import partial

from driftloop.objectstore import open_object_store
from driftloop.service import ConsumerSpec, Runtime, ServiceSpec, base_app
from driftloop.topics import MODEL_PROMOTED

from . import api
from .handlers import promotion_handler
from .loader import PromotionFollower
from .served import ModelTable

GROUP_PREFIX = "driftloop-serving-"


def build(runtime: Runtime) -> ServiceSpec:
    instance = uuid.uuid4().hex[:12]
    replica = f"{socket.gethostname()}-{os.getpid()}-{instance}"
    # A fresh group per process start: every replica replays the promotion history from the earliest offset
    # and ends on the current champion, independently of the others.
    group = f"{GROUP_PREFIX}{instance}"
    table = ModelTable()
    publish = runtime.bus.publish
    follower = PromotionFollower(table, open_object_store(runtime.settings), runtime.pipelines, publish, replica)
    app = base_app(runtime, "serving", "Online predictions with the champion model, hot-swapped on promotion.")
    app.state.model_table = table
    app.state.follower = follower
    app.include_router(api.router(table, runtime.pipelines, partial(publish, wait=False), replica))
    return ServiceSpec(
        app=app,
        consumers=[ConsumerSpec(group, {MODEL_PROMOTED: promotion_handler(follower)})],
        loops=[follower.run],
        health_info={
            "replica": lambda: replica,
            "models_loaded": table.loaded_count,
            "served": lambda: {s.model: s.version for s in table.all()},
        },
    )
