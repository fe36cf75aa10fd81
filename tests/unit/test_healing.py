"""What heals without a broker: a consumer life that fails is counted, drops readiness and is started again; a service
loop that dies stops its process (the supervisor starts it again) instead of leaving it ready without the loop."""

from __future__ import annotations

import threading

import pytest

from driftloop.runtime import bus as bus_module
from driftloop.runtime.bus import ConsumerStatus, keep_consuming
from driftloop.runtime.service import _exits_process_on_failure


def test_a_failed_consumer_life_is_counted_and_a_new_one_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus_module, "CONSUMER_RESTART_BACKOFF", (0.0, 0.0))
    status = ConsumerStatus(group="g", topics=["t"], assigned=True)
    stop = threading.Event()
    lives: list[bool] = []

    def one_life() -> None:
        lives.append(status.assigned)
        if len(lives) < 3:
            raise RuntimeError("fenced")
        stop.set()

    keep_consuming(status, one_life, stop)
    assert lives == [True, False, False]  # not ready from the first failure on
    assert status.restarts == 2 and status.last_error is not None and "fenced" in status.last_error


def test_a_loop_that_dies_stops_its_process() -> None:
    died: list[str] = []
    stops: list[bool] = []

    def landing_timer(_stop: threading.Event) -> None:
        raise RuntimeError("boom")

    guarded = _exits_process_on_failure(landing_timer, died, lambda: stops.append(True))
    with pytest.raises(RuntimeError):
        guarded(threading.Event())
    assert died == ["landing_timer"] and stops == [True]

    stopping = threading.Event()
    stopping.set()  # a failure while the process stops anyway is not a death
    with pytest.raises(RuntimeError):
        guarded(stopping)
    assert died == ["landing_timer"] and stops == [True]
