"""The stack's supervisor: ``driftloop up`` leaves it running (``python -m driftloop.ops.supervisor``) to keep the
components alive.

A component whose process exited is started again after a pause that doubles with each recent exit
(``supervisor.backoff_seconds`` up to ``max_backoff_seconds``). Every restart is logged (``<home>/logs/
supervisor.log``) and counted on the component in ``<home>/stack.json``, so ``driftloop status`` shows it. A
component that exits more than ``max_restarts`` times within ``window_seconds`` is marked ``crashing``, reported and
left stopped: a crash loop needs a person (its log says why), not a restart for ever. ``driftloop down`` stops the
supervisor first, then the rest.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from driftloop.contracts.settings import SupervisorSettings
from driftloop.ops.procs import pid_alive

log = logging.getLogger("driftloop.supervisor")


class Supervised(Protocol):
    """What the supervisor needs of a stack (``driftloop.ops.stack.Stack`` is one)."""

    def components(self) -> list[Any]: ...

    def save_components(self, components: list[Any]) -> None: ...

    def start_component(self, name: str) -> Any: ...


@dataclass
class _Watch:
    exits: deque[float] = field(default_factory=deque)
    restart_at: float | None = None


class Supervisor:
    def __init__(
        self,
        stack: Supervised,
        settings: SupervisorSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        alive: Callable[[int], bool] = pid_alive,
    ) -> None:
        self.stack = stack
        self.settings = settings
        self.clock = clock
        self.alive = alive
        self._watches: dict[str, _Watch] = {}

    def backoff(self, recent_exits: int) -> float:
        return min(self.settings.max_backoff_seconds, self.settings.backoff_seconds * 2 ** max(0, recent_exits - 1))

    def restart_in(self, name: str) -> float | None:
        """Seconds until ``name`` is restarted (None: no restart pending)."""
        watch = self._watches.get(name)
        return None if watch is None or watch.restart_at is None else watch.restart_at - self.clock()

    def check_once(self) -> list[str]:
        """Look at every component once: note exits, restart the ones whose pause is over. Returns what it did."""
        now = self.clock()
        components = self.stack.components()
        actions: list[str] = []
        changed = False
        for index, component in enumerate(components):
            if component.crashing:
                continue
            watch = self._watches.setdefault(component.name, _Watch())
            if watch.restart_at is None:
                if self.alive(component.pid):
                    continue
                # A new exit: count it, give up on a crash loop, else wait the backoff.
                watch.exits.append(now)
                while watch.exits and watch.exits[0] < now - self.settings.window_seconds:
                    watch.exits.popleft()
                component.last_exit = time.time()
                changed = True
                if len(watch.exits) > self.settings.max_restarts:
                    component.crashing = True
                    log.error(
                        "%s (pid %d) exited %d times within %.0f s: crashing, not restarted again; see %s",
                        component.name,
                        component.pid,
                        len(watch.exits),
                        self.settings.window_seconds,
                        component.log,
                    )
                    actions.append(f"{component.name}: crashing")
                    continue
                pause = self.backoff(len(watch.exits))
                watch.restart_at = now + pause
                log.warning("%s (pid %d) exited; restarting in %.1f s", component.name, component.pid, pause)
                actions.append(f"{component.name}: exited")
            if watch.restart_at is not None and now >= watch.restart_at:
                watch.restart_at = None
                try:
                    started = self.stack.start_component(component.name)
                except Exception as exc:
                    # Counted as another exit at the next look (the old pid is still dead).
                    log.error("%s: restart failed: %s", component.name, exc)
                    actions.append(f"{component.name}: restart failed")
                    continue
                started.restarts = component.restarts + 1
                started.last_exit = component.last_exit
                components[index] = started
                changed = True
                log.warning("%s restarted (pid %d, restart %d)", started.name, started.pid, started.restarts)
                actions.append(f"{component.name}: restarted")
        if changed:
            self.stack.save_components(components)
        return actions

    def run(self, stop: threading.Event) -> None:
        log.info("supervising %s", ", ".join(c.name for c in self.stack.components()))
        while not stop.is_set():
            try:
                self.check_once()
            except Exception:  # a bad state file read mid-write, ...: look again
                log.exception("supervisor check failed")
            stop.wait(self.settings.check_interval_seconds)
        log.info("supervisor stopped")


def main() -> None:
    from driftloop.contracts.settings import load_settings
    from driftloop.ops.stack import Stack

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [supervisor] %(message)s")
    settings = load_settings()
    stack = Stack(settings, on_progress=log.info)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    Supervisor(stack, settings.supervisor).run(stop)


if __name__ == "__main__":
    main()
