"""Warm-ups at service start: what a service's first model would otherwise import and initialise on its own clock
(a model family's library, the metrics), done once in a loop that runs at start and ends."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from driftloop.contracts.artifact import import_family
from driftloop.contracts.pipeline import PipelineConfig

log = logging.getLogger(__name__)


def warm_models_loop(
    service: str,
    pipelines: Mapping[str, PipelineConfig],
    also: Callable[[PipelineConfig], object] | None = None,
) -> Callable[[threading.Event], None]:
    """A service loop that imports the model family library of each pipeline (and runs ``also(pipeline)``) once at
    start, then ends. A failure is logged: the first model then pays for the imports itself."""

    def warm_models(stop_event: threading.Event) -> None:
        started = time.monotonic()
        try:
            for pipeline in list(pipelines.values()):
                if stop_event.is_set():
                    return
                import_family(pipeline.model.family)
                if also is not None:
                    also(pipeline)
        except Exception:
            log.exception("%s: warming the model libraries up failed", service)
            return
        log.info("%s: model libraries warm in %.1fs", service, time.monotonic() - started)

    return warm_models
