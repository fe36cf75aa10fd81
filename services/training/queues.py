"""Runs queued by model: a thread per model executes its runs in the order they were requested."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class ModelQueues:
    """A FIFO and a daemon thread per model (started with its first run). A run waiting for its data (rows after a
    change, up to ``model.change_wait_seconds``) holds its own model's queue, not the request consumer nor the other
    models' runs; the fits themselves still take turns (``TrainingHandlers``). Daemon threads: a stop waits for the
    runs under way as long as it waits for the consumers (``wait_idle``); one still running then stays active in the
    database and is executed again at the next start."""

    def __init__(self) -> None:
        self._queues: dict[str, queue.SimpleQueue[Callable[[], None]]] = {}
        self._lock = threading.Lock()
        self._busy = 0
        self._idle = threading.Condition()

    def submit(self, model: str, work: Callable[[], None]) -> None:
        with self._lock:
            pending = self._queues.get(model)
            if pending is None:
                pending = self._queues[model] = queue.SimpleQueue()
                threading.Thread(target=self._drain, args=(pending,), name=f"runs-{model}", daemon=True).start()
        pending.put(work)

    def _drain(self, pending: queue.SimpleQueue[Callable[[], None]]) -> None:
        while True:
            work = pending.get()
            with self._idle:
                self._busy += 1
            try:
                work()
            except Exception:  # a run's own errors end in its state; anything else must not stop the model's queue
                log.exception("a run of the queue failed outside its run")
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Until no run is under way, ``timeout`` seconds at most; True when none is."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)
