"""Ray for this process, started (or joined) by one thread that lives as long as the process, and put to sleep when
it has nothing to do; the fit runs as a one-CPU task.

One thread starts Ray: a local Ray's GCS and raylet get a parent-death signal tied to the thread that started them,
so a thread that ends (a consumer's, a loop's) would take them with it. The keeper thread never ends.

A local Ray costs about 3% of a core at rest (raylet, GCS, agents, an idle worker). With ``ray.idle_shutdown_seconds``
it starts on the first sign of work (a stream's cut starting: a training may follow; a training request; a run) and
is shut down that long after the last run and the last sign of work; a run that finds it asleep wakes it and waits.
A joined cluster (``ray.address``) is joined with the service and never left until it stops.

A local Ray's processes are recorded (``driftloop.runtime.ownedprocs``, owner ``training-ray``): the agents its
raylet starts survive a ``kill -9`` of this process, so the next start (and ``driftloop down``) stops them.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from driftloop.contracts.settings import Settings
from driftloop.errors import ServiceUnavailable
from driftloop.runtime import ownedprocs

from .fit import FitJob, FitResult, RunAborted, fit_feature_set, warm_fit_worker

log = logging.getLogger(__name__)

# Read by Ray when it is imported or started, so set with this module: no usage reporting; every port on 127.0.0.1;
# and no failure-signal handler of Ray's core in this process. Ray now starts after the service set its SIGTERM
# handler, and Ray's handler, installed over it, took the service's SIGTERM: the process then died (SIGABRT) in
# ray.shutdown before it stopped Ray's recorded processes (Ray started before the handler was set used to be
# overridden by it).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")

# A local Ray's object store holds only artifacts and feature metadata here: keep it small on a shared machine.
LOCAL_OBJECT_STORE_BYTES = 300 * 1024 * 1024

ABORT_POLL_SECONDS = 0.5
# The owner name of the local Ray's processes in ``<home>/state``.
RAY_PROCS = "training-ray"
# Workers warmed on each start: at most this many (a joined cluster may have many CPUs; the first fits use few).
MAX_WARM_WORKERS = 4
WARM_TIMEOUT_SECONDS = 120.0

ASLEEP, WAKING, AWAKE, SLEEPING, FAILED = "asleep", "waking", "awake", "going to sleep", "failed"

Models = Callable[[], Iterable[tuple[str, str]]]


class RayUnavailable(ServiceUnavailable):
    """Ray was shut down (the service is stopping) while a run waited for it."""

    default_code = "ray_unavailable"


@dataclass
class IdleRule:
    """When a local Ray goes to sleep: ``idle_seconds`` after the last run ended and the last sign of work, never
    while a run is on (``idle_seconds`` 0: never). Seconds of ``clock``, wall time: a sign of work is an event
    and carries the time it happened."""

    idle_seconds: float
    clock: Callable[[], float] = time.time
    runs: int = 0
    last_work: float = -math.inf

    def sign(self, at: float) -> bool:
        """Work seen at ``at``. True when it is fresh: an event older than the idle time (a backlog read at start)
        is no sign that work is coming."""
        now = self.clock()
        if self.idle_seconds and now - at >= self.idle_seconds:
            return False
        self.last_work = max(self.last_work, min(at, now))
        return True

    def run_started(self) -> None:
        self.runs += 1
        self.last_work = self.clock()

    def run_ended(self) -> None:
        self.runs -= 1
        self.last_work = self.clock()

    def awake_for(self) -> float | None:
        """Seconds left before Ray should sleep (0: now); None: not while a run is on, or never."""
        if not self.idle_seconds or self.runs:
            return None
        return max(0.0, self.last_work + self.idle_seconds - self.clock())


class RayKeeper:
    """Ray's state for this process and the thread that starts and stops it: the others ask (``sign``, ``at_work``,
    ``wait_awake``, ``shut_down``) and wait. ``start(settings)`` starts (or joins) Ray and returns where its
    processes are recorded (None: joined); ``stop(that)`` shuts it down."""

    def __init__(
        self,
        start: Callable[[Settings], Path | None],
        stop: Callable[[Path | None], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._start_ray, self._stop_ray = start, stop
        self._cond = threading.Condition()
        self._rule = IdleRule(0.0, clock)
        self._settings: Settings | None = None
        self._models: Models = list
        self._wake = False  # a start is asked for
        self._stop = False  # a shutdown is asked for (the service stops)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._home: Path | None = None  # where the local Ray's PIDs are recorded (None: joined or none)
        self.state = ASLEEP

    def configure(self, settings: Settings, models: Models = list) -> None:
        """Use these settings from the next start on, and start the keeper thread once."""
        with self._cond:
            self._configure(settings, models)

    def adopt(self, settings: Settings) -> None:
        """``configure`` unless done (a fit or search called outside the service: a bench, a test)."""
        with self._cond:
            if self._settings is None:
                self._configure(settings, list)

    def _configure(self, settings: Settings, models: Models) -> None:
        self._settings = settings
        self._models = models
        self._rule.idle_seconds = 0.0 if settings.ray_address else settings.ray.idle_shutdown_seconds
        if self._thread is None:
            self._thread = threading.Thread(target=self._keep, name="ray-keeper", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def ready(self) -> bool:
        """Asleep by design counts: only a Ray that failed to start (or a dead keeper) is not ready."""
        return self._thread is not None and self._thread.is_alive() and self.state != FAILED

    def sign(self, at: float) -> None:
        """Work may come (an event at ``at``): wake Ray if the sign is fresh, and keep it awake the idle time."""
        with self._cond:
            if self._rule.sign(at) and self.state not in (AWAKE, WAKING):
                self._wake = True
                self._cond.notify_all()

    @contextmanager
    def at_work(self, wake: bool = True) -> Iterator[None]:
        """Ray kept awake for the block, woken (without waiting here) if asleep and ``wake``."""
        with self._cond:
            self._rule.run_started()
            if wake and self.state not in (AWAKE, WAKING):
                self._wake = True
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._rule.run_ended()
                self._cond.notify_all()

    def wait_awake(self) -> None:
        """Return once Ray is awake (started here if asleep). Raises what its start raised."""
        with self._cond:
            if self.state == AWAKE:
                return
            self._wake = True
            self._cond.notify_all()
            while self.state != AWAKE and (self._wake or self.state in (WAKING, SLEEPING)):
                self._cond.wait()
            if self.state == AWAKE:
                return
            if self.state == FAILED and self._error is not None:
                raise self._error
            raise RayUnavailable("Ray was shut down while a run waited for it (the service is stopping)")

    def shut_down(self) -> None:
        """Shut Ray down now (the service stops), whatever runs on it; return once it is down."""
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._stop_ray(self._home)  # no keeper thread: nothing can be starting
                self._home = None
                return
            self._stop, self._wake = True, False
            self._cond.notify_all()
            while self._stop or self.state in (WAKING, SLEEPING):
                self._cond.wait()

    def record(self) -> None:
        """Record the local Ray's processes now (agents and workers start after ``ray.init``)."""
        home = self._home
        if home is None:
            return
        try:
            ownedprocs.record(home, RAY_PROCS, ray_processes())
        except OSError:
            log.exception("recording the Ray processes failed")

    # --- the keeper thread --------------------------------------------------------------------------------------

    def _next(self) -> str:
        """Wait (holding the condition) for the next thing to do: "start", "sleep" or "stop"; sets the state it
        leads to."""
        while True:
            if self._stop:
                self._stop = False
                self.state = SLEEPING
                return "stop"
            if self._wake and self.state != AWAKE:
                self._wake = False
                self.state = WAKING
                return "start"
            self._wake = False
            left = self._rule.awake_for() if self.state == AWAKE else None
            if left == 0:
                self.state = SLEEPING
                return "sleep"
            self._cond.wait(left)

    def _keep(self) -> None:
        while True:
            with self._cond:
                action, settings = self._next(), self._settings
            if action == "start" and settings is not None:
                self._start(settings)
            else:
                if action == "sleep":
                    log.info(
                        "no run and no sign of work for %.0fs (ray.idle_shutdown_seconds): shutting the local Ray "
                        "down until work comes",
                        self._rule.idle_seconds,
                    )
                try:
                    self._stop_ray(self._home)
                except Exception:
                    log.exception("shutting Ray down failed")
                self._home = None
                with self._cond:
                    self.state = ASLEEP
                    self._cond.notify_all()

    def _start(self, settings: Settings) -> None:
        started = time.monotonic()
        try:
            self._home = self._start_ray(settings)
            self.record()
        except Exception as exc:
            log.exception("starting Ray failed")
            with self._cond:
                self._error, self.state = exc, FAILED
                self._cond.notify_all()
            return
        log.info("Ray started in %.1fs: %s", time.monotonic() - started, settings.ray_address or "local instance")
        if settings.ray.warm_workers:
            # Before the runs waiting for Ray go on: a fit arriving meanwhile would take a second, cold worker and
            # import the same libraries beside the warm-up (measured: a 3.5 s fit instead of 0.6 s, on 2 busy cores).
            self._warm_workers(settings)
        with self._cond:
            self._error, self.state = None, AWAKE
            self._rule.sign(self._rule.clock())  # awake for at least the idle time
            self._cond.notify_all()
        log.info("Ray awake %.1fs after the start", time.monotonic() - started)

    def _warm_workers(self, settings: Settings) -> None:
        """One ``warm_fit_worker`` task per CPU (at most ``MAX_WARM_WORKERS``; a local Ray, at most the
        ``ray.idle_workers`` it keeps), all at once so that each lands on a worker of its own. Ray keeps them idle
        for the next tasks: the first fit finds its libraries imported. A failure is logged: the fit imports them."""
        import ray

        try:
            count = min(int(ray.cluster_resources().get("CPU", 1)), MAX_WARM_WORKERS)
            if not settings.ray_address:
                count = min(count, settings.ray.idle_workers)
            task = ray.remote(num_cpus=1)(warm_fit_worker)
            models = list(self._models())
            # Bounded: a stop waits for the keeper thread.
            ray.get([task.remote(models) for _ in range(max(1, count))], timeout=WARM_TIMEOUT_SECONDS)
        except Exception:
            log.warning("warming the Ray workers up failed", exc_info=True)
            return
        self.record()


def _start_ray(settings: Settings) -> Path | None:
    """Join ``settings.ray_address``, or start a local Ray bound to loopback (never someone else's cluster).
    Returns where the local Ray's processes are recorded (None: joined)."""
    import ray

    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if settings.ray_address:
        ray.init(address=settings.ray_address, **options)
        return None
    # What a predecessor killed with -9 left running: stop it first (only the PIDs it recorded).
    reclaim_left_processes(settings)
    _nicer_children(settings.ray.niceness)
    forward_logs = settings.ray.forward_worker_logs
    # "local", not None: None would join a cluster found on this machine (another user's `ray start`).
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
    return settings.home


def _nicer_children(niceness: int) -> None:
    """Make the calling thread (the keeper's, which only starts and stops Ray) ``niceness`` nicer than the process:
    the processes it starts (Ray's GCS and raylet, and the workers the raylet starts) inherit it. On Linux a nice
    value is per thread, so the service's other threads keep theirs."""
    if not niceness or not hasattr(os, "setpriority"):
        return
    try:
        base = os.getpriority(os.PRIO_PROCESS, os.getpid())  # the main thread's
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, base + niceness))
    except OSError as exc:  # not allowed here: Ray runs at the service's priority
        log.warning("Ray's processes keep the service's CPU priority: %s", exc)
    nicer_own_session(niceness)


AUTOGROUP = Path("/proc/self/autogroup")


def nicer_own_session(niceness: int) -> bool:
    """Make this process's session ``niceness`` nicer against the other sessions, when the process leads it.

    Linux schedules each session as one group (autogroup) with a fair share of the CPU, and a nice value counts only
    inside its group: the services each lead their own session, so a nice Ray in training's session still took half
    the cores from ingestion's Spark cut beside it. The group's own nice value is what yields across services. Only
    a session this process leads (as the launcher starts each service) is changed, never a shell's or a test run's.
    Returns True when the session's nice value is ``niceness`` or nicer."""
    if not niceness or not AUTOGROUP.exists() or os.getsid(0) != os.getpid():
        return False
    try:
        current = int(AUTOGROUP.read_text().split()[-1])  # "/autogroup-42 nice 0"
        if current < niceness:
            AUTOGROUP.write_text(str(min(19, niceness)))
        return True
    except (OSError, ValueError, IndexError) as exc:
        log.warning("the training service's session keeps its CPU share against the other services: %s", exc)
        return False


def _stop_ray(home: Path | None) -> None:
    """Shut Ray down, then stop what is left of the processes recorded for it (agents do not always follow)."""
    import ray

    if ray.is_initialized():
        if home is not None:
            ownedprocs.record(home, RAY_PROCS, ray_processes())
        ray.shutdown()
    if home is not None:
        ownedprocs.stop_recorded(home, RAY_PROCS)


def stop_log_monitor() -> None:
    """Stop the local Ray's log monitor: it only forwards the workers' output to drivers (``log_to_driver``), and
    polls their log files ten times a second to do it. Best effort: a private API of Ray's node."""
    import ray

    node = getattr(getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None)
    try:
        node.kill_log_monitor()  # type: ignore[union-attr]
    except Exception:
        log.warning("could not stop Ray's log monitor (it keeps polling the workers' logs)", exc_info=True)


_keeper = RayKeeper(_start_ray, _stop_ray)


def reclaim_left_processes(settings: Settings) -> None:
    """Stop the Ray processes a predecessor killed with -9 left running (only the PIDs it recorded)."""
    left = ownedprocs.stop_recorded(settings.home, RAY_PROCS)
    if left:
        log.warning("stopped %d Ray process(es) left by a previous training process: %s", len(left), left)


def start_ray_keeper(settings: Settings, models: Models) -> None:
    """At the service's start: stop what a killed predecessor left, then let the keeper start Ray when work comes
    (``models()``: the pipelines' ``(family, task)``, whose libraries each start warms). Ray that never sleeps
    (``ray.idle_shutdown_seconds`` 0, or a joined cluster) is started now, in the keeper thread."""
    if not settings.ray_address:
        reclaim_left_processes(settings)
    _keeper.configure(settings, models)
    if settings.ray_address or not settings.ray.idle_shutdown_seconds:
        _keeper.sign(time.time())


def note_work(at: float) -> None:
    """A sign that work may come (an event's time, seconds since the epoch): Ray is woken if asleep."""
    _keeper.sign(at)


@contextmanager
def ray_at_work(settings: Settings, wake: bool = True) -> Iterator[None]:
    """Ray kept awake for the block (a run), woken if asleep and ``wake``; ``ensure_ray`` waits for it."""
    _keeper.adopt(settings)
    with _keeper.at_work(wake):
        yield


def ensure_ray(settings: Settings) -> None:
    """Return once Ray is awake: woken by the keeper thread if asleep (a run never fails for Ray's sleep)."""
    _keeper.adopt(settings)
    _keeper.wait_awake()


@functools.cache
def _fit_task() -> Any:
    import ray

    return ray.remote(num_cpus=1)(fit_feature_set)


def fit_on_ray(settings: Settings, job: FitJob, should_abort: Callable[[], bool] | None = None) -> FitResult:
    """Run the fit as a Ray task and wait for it. A task error re-raises the task's own exception. When
    ``should_abort`` turns true the task is force-cancelled (its worker killed, its CPU freed) and RunAborted raised.
    A small fit that finds the local Ray not awake runs here instead (``ray.local_fit_max_rows``)."""
    import ray
    from ray.exceptions import RayTaskError

    if fits_without_waiting_for_ray(settings, job, _keeper.state):
        return _fit_here(settings, job, should_abort)
    with ray_at_work(settings):
        ensure_ray(settings)
        record_ray_processes()  # agents started since ray.init are on record before the fit can be interrupted
        ref = _fit_task().remote(job)
        try:
            while True:
                done, _ = ray.wait([ref], timeout=ABORT_POLL_SECONDS)
                if done:
                    record_ray_processes()
                    result: FitResult = ray.get(ref)
                    result.log.append(f"{datetime.now(tz=UTC).isoformat(timespec='milliseconds')} the fit ran on Ray")
                    return result
                if should_abort is not None and should_abort():
                    # force=True: a plain cancel is unreliable on a running task and may leave its CPU taken.
                    ray.cancel(ref, force=True)
                    raise RunAborted("aborted during the fit")
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise


def fits_without_waiting_for_ray(settings: Settings, job: FitJob, state: str) -> bool:
    """A plain fit of a known, small feature set (``ray.local_fit_max_rows``) while a local Ray is not awake: Ray's
    start would cost many times the fit."""
    limit = settings.ray.local_fit_max_rows
    return not settings.ray_address and state != AWAKE and job.rows is not None and job.rows <= limit


def _fit_here(settings: Settings, job: FitJob, should_abort: Callable[[], bool] | None) -> FitResult:
    """The fit in this process, in the caller's thread; Ray is not woken for it (a Ray already starting goes on, its
    processes nicer than this thread: ``ray.niceness``). An abort asked for meanwhile takes effect when the fit ends
    (it is small)."""
    _keeper.adopt(settings)
    state = _keeper.state
    with _keeper.at_work(wake=False):
        result = fit_feature_set(job)
    if should_abort is not None and should_abort():
        raise RunAborted("aborted during the fit")
    stamp = datetime.now(tz=UTC).isoformat(timespec="milliseconds")
    where = (
        f"{stamp} the fit ran in the training service's process: Ray was {state}, and {job.rows} rows are within "
        f"ray.local_fit_max_rows ({settings.ray.local_fit_max_rows})"
    )
    result.log.append(where)
    return result


def ray_processes() -> list[int]:
    """The processes of the local Ray this process started (its node's daemons and everything below them)."""
    import ray

    node = getattr(ray, "_private", None)
    node = getattr(getattr(node, "worker", None), "_global_node", None)
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
    _keeper.record()


def ray_ready() -> bool:
    """False only when Ray failed to start: asleep (no work for ``ray.idle_shutdown_seconds``) is ready."""
    return _keeper.ready()


def ray_state() -> str:
    """Ray's state here: asleep, waking, awake, going to sleep or failed (on ``/healthz``)."""
    return _keeper.state


def shutdown_ray() -> None:
    """Shut Ray down (the service stops), then stop what is left of the processes recorded for it."""
    _keeper.shut_down()
