"""Ray for this process: started (or joined) once, by the service's build in the main thread (a local Ray's
processes get a parent-death signal tied to the starting thread); the fit runs as a one-CPU task.

A local Ray's processes are recorded (``driftloop.runtime.ownedprocs``, owner ``training-ray``): the agents its
raylet starts survive a ``kill -9`` of this process, so the next start (and ``driftloop down``) stops them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from driftloop.contracts.pipeline import PipelineConfig
from driftloop.contracts.settings import Settings
from driftloop.runtime import ownedprocs

from .fit import FitJob, FitResult, RunAborted, fit_feature_set, warm_fit_worker

log = logging.getLogger(__name__)

# A local Ray's object store holds only artifacts and feature metadata here: keep it small on a shared machine.
LOCAL_OBJECT_STORE_BYTES = 300 * 1024 * 1024

ABORT_POLL_SECONDS = 0.5
# The owner name of the local Ray's processes in ``<home>/state``.
RAY_PROCS = "training-ray"

_lock = threading.Lock()
_fit_task: Any = None
_home: Any = None  # where the local Ray's PIDs are recorded (None: Ray joined, not started here)


def ensure_ray(settings: Settings) -> None:
    """Join ``settings.ray_address``, or start a local Ray bound to loopback (never someone else's cluster)."""
    global _fit_task, _home
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
                # What a predecessor killed with -9 left running: stop it first (only the PIDs it recorded).
                left = ownedprocs.stop_recorded(settings.home, RAY_PROCS)
                if left:
                    log.warning("stopped %d Ray process(es) left by a previous training process: %s", len(left), left)
                forward_logs = settings.ray.forward_worker_logs
                ray.init(
                    address="local",
                    num_cpus=settings.ray.num_cpus,
                    object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                    log_to_driver=forward_logs,
                    _system_config={"num_workers_soft_limit": settings.ray.idle_workers},
                    **options,
                )
                if not forward_logs:
                    stop_log_monitor()
                _home = settings.home
                record_ray_processes()
            log.info("ray ready: %s", address or "local instance")
        if _fit_task is None:
            _fit_task = ray.remote(num_cpus=1)(fit_feature_set)


def stop_log_monitor() -> None:
    """Stop the local Ray's log monitor: it only forwards the workers' output to drivers (``log_to_driver``), and
    polls their log files ten times a second to do it. Best effort: a private API of Ray's node."""
    import ray

    node = getattr(getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None)
    try:
        node.kill_log_monitor()  # type: ignore[union-attr]
    except Exception:
        log.warning("could not stop Ray's log monitor (it keeps polling the workers' logs)", exc_info=True)


# Workers warmed at start: at most this many (a joined cluster may have many CPUs; the first fits use few).
MAX_WARM_WORKERS = 4


def warm_workers_loop(settings: Settings, pipelines: Mapping[str, PipelineConfig]) -> Callable[[threading.Event], None]:
    """A service loop that runs once at start: one ``warm_fit_worker`` task per CPU (at most ``MAX_WARM_WORKERS``;
    a local Ray, at most the ``ray.idle_workers`` it keeps), all at once so that each lands on a worker of its own.
    Ray keeps them idle for the next tasks: the first fit finds its libraries imported. A failure is logged: the
    first fit imports them."""

    def warm_workers(stop_event: threading.Event) -> None:
        import ray

        started = time.monotonic()
        try:
            ensure_ray(settings)
            models = [(p.model.family, p.model.task) for p in pipelines.values()]
            count = min(int(ray.cluster_resources().get("CPU", 1)), MAX_WARM_WORKERS)
            if not settings.ray.address:  # a local Ray keeps only ray.idle_workers idle: warm no more
                count = min(count, settings.ray.idle_workers)
            task = ray.remote(num_cpus=1)(warm_fit_worker)
            ray.get([task.remote(models) for _ in range(max(1, count))])
        except Exception:
            log.exception("warming the Ray workers up failed")
            return
        log.info("Ray workers warm in %.1fs", time.monotonic() - started)

    return warm_workers


def fit_on_ray(settings: Settings, job: FitJob, should_abort: Callable[[], bool] | None = None) -> FitResult:
    """Run the fit as a Ray task and wait for it. A task error re-raises the task's own exception. When
    ``should_abort`` turns true the task is force-cancelled (its worker killed, its CPU freed) and RunAborted raised."""
    import ray
    from ray.exceptions import RayTaskError

    ensure_ray(settings)
    record_ray_processes()  # agents started since ray.init are on record before the fit can be interrupted
    ref = _fit_task.remote(job)
    try:
        while True:
            done, _ = ray.wait([ref], timeout=ABORT_POLL_SECONDS)
            if done:
                record_ray_processes()
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


def ray_processes() -> list[int]:
    """The processes of the local Ray this process started (its node's daemons and everything below them)."""
    import ray

    node = getattr(getattr(ray, "_private", None), "worker", None)
    node = getattr(node, "_global_node", None)
    roots = [
        info.process.pid
        for infos in (getattr(node, "all_processes", None) or {}).values()
        for info in infos
        if getattr(info, "process", None) is not None
    ]
    return ownedprocs.descendants(roots)


def record_ray_processes() -> None:
    """Record the local Ray's processes now (its agents and workers start after ``ray.init``: called again after
    each fit)."""
    if _home is None:
        return
    try:
        ownedprocs.record(_home, RAY_PROCS, ray_processes())
    except OSError:
        log.exception("recording the Ray processes failed")


def ray_ready() -> bool:
    import ray

    return bool(ray.is_initialized())


def shutdown_ray() -> None:
    """Shut Ray down, then stop what is left of the processes recorded for it (agents do not always follow)."""
    global _home
    import ray

    with _lock:
        if ray.is_initialized():
            record_ray_processes()
            ray.shutdown()
        if _home is not None:
            ownedprocs.stop_recorded(_home, RAY_PROCS)
            _home = None
