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
import mmap
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

# Set in a worker's environment: "<socket fd>,<shared readiness fd>,<worker index>".
WORKER_ENV = "DRIFTLOOP_HTTP_WORKER"
PR_SET_PDEATHSIG = 1


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


def spawn_workers(service: str, sock: socket.socket, flag: SharedFlag, count: int) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` HTTP workers of ``service`` serving on ``sock``."""
    workers = []
    for index in range(1, count + 1):
        env = {**os.environ, WORKER_ENV: f"{sock.fileno()},{flag.fd},{index}"}
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", f"driftloop.services.{service}"],
                env=env,
                pass_fds=(sock.fileno(), flag.fd),
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        )
    return workers


def worker_role() -> tuple[int, SharedFlag, int] | None:
    """In a worker: its socket descriptor, the shared readiness and its index; None in a service's first process."""
    role = os.environ.get(WORKER_ENV)
    if not role:
        return None
    sock_fd, flag_fd, index = (int(part) for part in role.split(","))
    return sock_fd, SharedFlag(flag_fd), index


def publish_readiness(flag: SharedFlag, ready: Callable[[], bool], stop: threading.Event, every: float = 1.0) -> None:
    """In the first process, while workers run: copy ``ready()`` (its consumers' state) to the shared byte."""
    while True:
        flag.set(ready())
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
