"""The one way to retry: exponential backoff with jitter.

- ``retry(fn, attempts=..., retry_on=(...))`` calls ``fn`` until it returns, retrying only the errors named in
  ``retry_on`` (anything else goes straight through) and re-raising the last one when the attempts run out.
- ``Backoff`` hands out the same delays to loops that wait on their own terms: a supervisor that waits on a stop
  event, async code that awaits ``asyncio.sleep``, a loop that retries for ever.

Delays grow ``first_delay``, ``2 * first_delay``, ``4 * first_delay``... up to ``max_delay``; jitter takes up to
``jitter`` of each off at random, so that writers that collided do not collide again in step.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
OnRetry = Callable[[int, BaseException, float], None]


@dataclass
class Backoff:
    """Growing delays: ``next_delay()`` gives the next one, ``reset()`` starts again from ``first_delay``.

    Each delay is ``min(max_delay, first_delay * factor ** n)`` less a random part of up to ``jitter`` of it (0: none),
    so it is never above ``max_delay`` and never below ``(1 - jitter)`` of the undisturbed delay."""

    first_delay: float = 0.5
    max_delay: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.first_delay < 0 or self.max_delay < self.first_delay:
            raise ValueError(f"Backoff needs 0 <= first_delay <= max_delay (got {self.first_delay}, {self.max_delay})")
        if self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError(f"Backoff needs factor >= 1 and 0 <= jitter <= 1 (got {self.factor}, {self.jitter})")

    def next_delay(self) -> float:
        # The exponent is bounded: past max_delay the delay stops growing anyway (and a float would overflow).
        base = min(self.max_delay, self.first_delay * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return base * (1 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.attempt = 0


def retry(
    fn: Callable[[], T],
    *,
    attempts: int,
    retry_on: tuple[type[BaseException], ...],
    first_delay: float = 0.1,
    max_delay: float = 5.0,
    jitter: float = 0.2,
    what: str = "",
    on_retry: OnRetry | None = None,
    sleep: Callable[[float], Any] = time.sleep,
) -> T:
    """``fn()``, called up to ``attempts`` times while it raises one of ``retry_on``, with a ``Backoff`` delay
    between calls. Errors not in ``retry_on`` are raised at once; after the last attempt its error is raised.

    ``on_retry(attempt, error, delay)`` is called before each wait (default: a warning naming ``what``);
    ``sleep`` waits (e.g. a stop event's ``wait``)."""
    if attempts < 1:
        raise ValueError(f"retry needs at least one attempt (got {attempts})")
    backoff = Backoff(first_delay=first_delay, max_delay=max_delay, jitter=jitter)
    report = on_retry or _log_retry(what or getattr(fn, "__qualname__", repr(fn)), attempts)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except retry_on as exc:
            if attempt == attempts:
                raise
            delay = backoff.next_delay()
            report(attempt, exc, delay)
            sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _log_retry(what: str, attempts: int) -> OnRetry:
    def report(attempt: int, exc: BaseException, delay: float) -> None:
        log.warning("%s failed (attempt %d of %d): %r; retrying in %.2f s", what, attempt, attempts, exc, delay)

    return report


def each_until_done(
    items: list[str],
    attempt: Callable[[str], object],
    stop_event: threading.Event,
    *,
    what: str,
    retry_on: tuple[type[BaseException], ...],
) -> None:
    """Run ``attempt(item)`` for each item until it succeeds once, with backoff between rounds (start-up
    reconciles: the owning service may not answer yet). ``retry_on`` errors try again; any other error is logged
    and the item given up (the bus may still bring what it needed). Returns when all are done or on stop."""
    pending = list(items)
    backoff = Backoff(first_delay=1.0, max_delay=30.0)
    while pending and not stop_event.is_set():
        for item in list(pending):
            try:
                attempt(item)
                pending.remove(item)
            except retry_on as exc:
                log.warning("%s of %s not done yet (%s); trying again", what, item, exc)
            except Exception:
                log.exception("%s of %s failed", what, item)
                pending.remove(item)
        if pending:
            stop_event.wait(backoff.next_delay())
