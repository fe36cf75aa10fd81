"""The stack's supervisor on real child processes: a component that exits is restarted after its backoff and the
restart is counted; one that keeps exiting is marked crashing and left stopped. The clock is the test's."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from driftloop.contracts.settings import SupervisorSettings
from driftloop.ops.procs import pid_alive, spawn, stop_pid, wait_until
from driftloop.ops.stack import Component
from driftloop.ops.supervisor import Supervisor


class FakeStack:
    """Components whose processes are small Python programs; ``program`` says what a (re)start runs."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.program = "import time; time.sleep(60)"
        self.saved: list[Component] = []
        self.started: list[int] = []

    def spawn(self, name: str) -> Component:
        log = self.tmp_path / f"{name}.out"
        proc = spawn([sys.executable, "-c", self.program], log)
        self.started.append(proc.pid)
        return Component(name, proc.pid, "", str(log), None)

    def components(self) -> list[Component]:
        return [Component(**vars(c)) for c in self.saved]

    def save_components(self, components: list[Component]) -> None:
        self.saved = [Component(**vars(c)) for c in components]

    def start_component(self, name: str) -> Component:
        return self.spawn(name)

    def stop(self) -> None:
        for pid in self.started:
            stop_pid(pid, timeout=5)


@pytest.fixture
def stack(tmp_path: Path):  # type: ignore[no-untyped-def]
    fake = FakeStack(tmp_path)
    yield fake
    fake.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_exited_component_is_restarted_after_its_backoff_and_counted(
    stack: FakeStack, caplog: pytest.LogCaptureFixture
) -> None:
    stack.save_components([stack.spawn("serving"), stack.spawn("registry")])
    clock = Clock()
    supervisor = Supervisor(stack, SupervisorSettings(backoff_seconds=2.0, max_backoff_seconds=30.0), clock=clock)
    assert supervisor.check_once() == []

    killed = stack.saved[0].pid
    stop_pid(killed, timeout=5)
    with caplog.at_level(logging.WARNING, logger="driftloop.supervisor"):
        assert supervisor.check_once() == ["serving: exited"]
        clock.now += 1.0
        assert supervisor.check_once() == []  # still within its backoff
        clock.now += 1.5
        assert supervisor.check_once() == ["serving: restarted"]
    serving, registry = stack.saved
    assert serving.pid != killed and pid_alive(serving.pid)
    assert serving.restarts == 1 and serving.last_exit is not None and not serving.crashing
    assert registry.restarts == 0 and pid_alive(registry.pid)
    assert any("serving restarted" in r.getMessage() for r in caplog.records)


def test_a_component_that_keeps_crashing_is_reported_and_left_stopped(
    stack: FakeStack, caplog: pytest.LogCaptureFixture
) -> None:
    stack.program = "raise SystemExit(3)"
    stack.save_components([stack.spawn("training")])
    clock = Clock()
    settings = SupervisorSettings(backoff_seconds=1.0, max_backoff_seconds=4.0, max_restarts=3, window_seconds=600)
    supervisor = Supervisor(stack, settings, clock=clock)
    pauses = []
    with caplog.at_level(logging.WARNING, logger="driftloop.supervisor"):
        for _ in range(20):
            wait_until(lambda: not pid_alive(stack.saved[0].pid), 10, "the component to exit")
            actions = supervisor.check_once()
            if actions == ["training: crashing"]:
                break
            assert actions == ["training: exited"]
            pauses.append(supervisor.restart_in("training"))
            clock.now += 10
            assert supervisor.check_once() == ["training: restarted"]
    (training,) = stack.saved
    assert pauses == [1.0, 2.0, 4.0]  # doubling, capped
    assert training.crashing and training.restarts == 3
    assert len(stack.started) == 4  # the first start and three restarts: not for ever
    clock.now += 1000
    assert supervisor.check_once() == []
    assert any("crashing, not restarted again" in r.getMessage() for r in caplog.records)


def test_exits_long_apart_do_not_add_up_to_a_crash_loop(stack: FakeStack) -> None:
    stack.save_components([stack.spawn("monitor")])
    clock = Clock()
    settings = SupervisorSettings(backoff_seconds=0.0, max_restarts=1, window_seconds=60)
    supervisor = Supervisor(stack, settings, clock=clock)
    for restart in (1, 2, 3):
        stop_pid(stack.saved[0].pid, timeout=5)
        assert supervisor.check_once() == ["monitor: exited", "monitor: restarted"]
        assert stack.saved[0].restarts == restart
        clock.now += 120  # the previous exit has left the window
    assert not stack.saved[0].crashing
