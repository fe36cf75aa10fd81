"""Several HTTP worker processes behind a service's one port (``features.workers``, ``serving.workers``).

The service's first process binds the listening socket, starts ``count - 1`` workers (the same service module,
``python -m driftloop.services.NAME``) that inherit it, and serves on it too: the kernel hands each connection to
whichever process accepts first. Workers serve the HTTP app only; the consumers and loops run in the first
process, which shares whether they are assigned through one byte of shared memory, so that every process's
``/healthz`` tells the same readiness. A worker ends with the first process (SIGTERM from the kernel on Linux,
besides the first process stopping it by PID).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# Set in a worker's environment: "<socket fd>,<shared readiness fd>,<worker index>". Not DRIFTLOOP_*: those are
# settings, and an unknown one is refused.
WORKER_ENV = "_DRIFTLOOP_HTTP_WORKER"
PR_SET_PDEATHSIG = 1
# A worker that exits after running this long is started again; one that fails sooner is left down.
RESTART_AFTER = 10.0


def default_workers() -> int:
    """Worker processes when the setting is left empty: one per core available to this process, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


class SharedFlag:
    """One byte of memory shared with the workers (an anonymous file passed by descriptor)."""

    def __init__(self, fd: int | None = None) -> None:
        if fd is None:
            fd = os.memfd_create("driftloop-ready", 0)  # inheritable only where passed (pass_fds)
            os.ftruncate(fd, 1)
        self.fd = fd
        self._map = mmap.mmap(fd, 1)

    def set(self, value: bool) -> None:
        self._map[0] = 1 if value else 0

    def get(self) -> bool:
        return self._map[0] == 1


def _die_with_parent() -> None:
    """In the worker before exec: SIGTERM when the first process dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn_worker(service: str, sock: socket.socket, flag: SharedFlag, index: int) -> subprocess.Popen[bytes]:
    """Start HTTP worker ``index`` of ``service``, serving on ``sock``."""
    return subprocess.Popen(
        [sys.executable, "-m", f"driftloop.services.{service}"],
        env={**os.environ, WORKER_ENV: f"{sock.fileno()},{flag.fd},{index}"},
        pass_fds=(sock.fileno(), flag.fd),
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )


def spawn_workers(service: str, sock: socket.socket, flag: SharedFlag, count: int) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` HTTP workers of ``service`` serving on ``sock``."""
    return [spawn_worker(service, sock, flag, index) for index in range(1, count + 1)]


def worker_role() -> tuple[int, SharedFlag, int] | None:
    """In a worker: its socket descriptor, the shared readiness and its index; None in a service's first process."""
    role = os.environ.pop(WORKER_ENV, None)  # not inherited by what the worker starts
    if not role:
        return None
    sock_fd, flag_fd, index = (int(part) for part in role.split(","))
    return sock_fd, SharedFlag(flag_fd), index


def supervise(
    service: str,
    sock: socket.socket,
    flag: SharedFlag,
    workers: list[subprocess.Popen[bytes]],
    ready: Callable[[], bool],
    stop: threading.Event,
    every: float = 1.0,
) -> None:
    """In the first process, while workers run: copy ``ready()`` (its consumers' state) to the shared byte, and
    start again a worker that exited (logged with its exit code), unless it failed within ``RESTART_AFTER``
    seconds of its start (a worker that cannot start would only fail again: see its log)."""
    started = {proc.pid: time.monotonic() for proc in workers}
    while True:
        flag.set(ready())
        for index, proc in enumerate(workers):
            code = proc.poll()
            if code is None or stop.is_set() or proc.pid not in started:
                continue
            lived = time.monotonic() - started.pop(proc.pid)
            what = f"{service}: HTTP worker {index + 1} (pid {proc.pid}) exited with {code} after {lived:.0f}s"
            if lived < RESTART_AFTER:
                log.error("%s; not started again (see %s-worker%d.log)", what, service, index + 1)
                continue
            log.error("%s; starting it again", what)
            workers[index] = spawn_worker(service, sock, flag, index + 1)
            started[workers[index].pid] = time.monotonic()
        if stop.wait(every):
            return


def stop_workers(workers: list[subprocess.Popen[bytes]], timeout: float = 10) -> None:
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in workers:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
