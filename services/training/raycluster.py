"""Ray for this process: started (or joined) once, by the service's build in the main thread (a local Ray's
processes get a parent-death signal tied to the starting thread); the fit runs as a one-CPU task."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from driftloop.contracts.settings import Settings

from .fit import FitJob, FitResult, RunAborted, fit_feature_set

log = logging.getLogger(__name__)

# A local Ray's object store holds only artifacts and feature metadata here: keep it small on a shared machine.
LOCAL_OBJECT_STORE_BYTES = 300 * 1024 * 1024

ABORT_POLL_SECONDS = 0.5

_lock = threading.Lock()
_fit_task: Any = None


def ensure_ray(settings: Settings) -> None:
    """Join ``settings.ray_address``, or start a local Ray bound to loopback (never someone else's cluster)."""
    global _fit_task
    with _lock:
        # Set before Ray reads them: no usage reporting, every port on 127.0.0.1.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        import ray

        if not ray.is_initialized():
            address = settings.ray_address
            options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
            if address:
                ray.init(address=address, **options)
            else:
                # "local", not None: None would join a cluster found on this machine (another user's `ray start`).
                ray.init(
                    address="local",
                    num_cpus=settings.ray.num_cpus,
                    object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                    **options,
                )
            log.info("ray ready: %s", address or "local instance")
        if _fit_task is None:
            _fit_task = ray.remote(num_cpus=1)(fit_feature_set)


def fit_on_ray(settings: Settings, job: FitJob, should_abort: Callable[[], bool] | None = None) -> FitResult:
    """Run the fit as a Ray task and wait for it. A task error re-raises the task's own exception. When
    ``should_abort`` turns true the task is force-cancelled (its worker killed, its CPU freed) and RunAborted raised."""
    import ray
    from ray.exceptions import RayTaskError

    ensure_ray(settings)
    ref = _fit_task.remote(job)
    try:
        while True:
            done, _ = ray.wait([ref], timeout=ABORT_POLL_SECONDS)
            if done:
                return ray.get(ref)
            if should_abort is not None and should_abort():
                # force=True: a plain cancel is unreliable on a running task and may leave its CPU taken.
                ray.cancel(ref, force=True)
                raise RunAborted("aborted during the fit")
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise


def ray_ready() -> bool:
    import ray

    return bool(ray.is_initialized())


def shutdown_ray() -> None:
    import ray

    with _lock:
        if ray.is_initialized():
            ray.shutdown()
