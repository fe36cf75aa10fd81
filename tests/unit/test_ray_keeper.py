"""The training service's local Ray sleeps when idle: the rule (an injectable clock) and the keeper thread that
applies it (with a stand-in for Ray's start and stop, which it calls from its one thread)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftloop.contracts.settings import Settings
from driftloop.ops.procs import wait_until
from driftloop.services.training.raycluster import ASLEEP, AWAKE, FAILED, IdleRule, RayKeeper


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ray_sleeps_the_idle_time_after_the_last_sign_of_work() -> None:
    clock = Clock()
    rule = IdleRule(60.0, clock)
    assert rule.sign(clock.now)
    clock.now += 40
    assert rule.awake_for() == 20
    assert rule.sign(clock.now - 5)  # a sign counts from when it happened
    assert rule.awake_for() == 55
    clock.now += 55
    assert rule.awake_for() == 0


def test_an_old_event_is_no_sign_of_work() -> None:
    clock = Clock()
    rule = IdleRule(60.0, clock)
    assert not rule.sign(clock.now - 60)  # e.g. a backlog read when the consumer group first subscribes
    assert rule.awake_for() == 0
    assert rule.sign(clock.now - 59)


def test_ray_never_sleeps_during_a_run_and_sleeps_the_idle_time_after_it() -> None:
    clock = Clock()
    rule = IdleRule(60.0, clock)
    rule.run_started()
    clock.now += 3600
    assert rule.awake_for() is None
    rule.run_ended()
    assert rule.awake_for() == 60


def test_idle_time_zero_never_sleeps() -> None:
    clock = Clock()
    rule = IdleRule(0.0, clock)
    assert rule.sign(clock.now - 10_000)
    clock.now += 10_000
    assert rule.awake_for() is None


class FakeRay:
    """Stands for Ray's start and stop: records the calls and the thread they came from."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = False
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def start(self, _settings: Settings) -> Path | None:
        self.started.set()
        self.release.wait(10)
        self.calls.append(("start", threading.current_thread().name))
        if self.fail:
            raise RuntimeError("no Ray today")
        return None

    def stop(self, _home: Path | None) -> None:
        self.calls.append(("stop", threading.current_thread().name))


@pytest.fixture
def keeper(tmp_path: Path) -> Iterator[tuple[RayKeeper, FakeRay, Clock]]:
    fake, clock = FakeRay(), Clock()
    keeper = RayKeeper(fake.start, fake.stop, clock)
    keeper.configure(Settings(home=tmp_path, ray={"idle_shutdown_seconds": 60, "warm_workers": False}))
    yield keeper, fake, clock
    keeper.shut_down()


def poke(keeper: RayKeeper) -> None:
    """Wake the keeper thread so that it reads the (fake) clock again."""
    with keeper._cond:
        keeper._cond.notify_all()


def test_the_keeper_starts_ray_on_a_sign_of_work_and_shuts_it_down_when_idle(
    keeper: tuple[RayKeeper, FakeRay, Clock],
) -> None:
    keeper_, fake, clock = keeper
    assert keeper_.state == ASLEEP and keeper_.ready()  # asleep by design is ready
    assert fake.calls == []
    keeper_.sign(clock.now)
    wait_until(lambda: keeper_.state == AWAKE, 10, "Ray awake")
    clock.now += 59
    poke(keeper_)
    assert keeper_.state == AWAKE
    clock.now += 1
    poke(keeper_)
    wait_until(lambda: keeper_.state == ASLEEP, 10, "Ray asleep")
    assert fake.calls == [("start", "ray-keeper"), ("stop", "ray-keeper")]


def test_a_run_that_finds_ray_asleep_wakes_it_waits_and_keeps_it_awake(
    keeper: tuple[RayKeeper, FakeRay, Clock],
) -> None:
    keeper_, fake, clock = keeper
    with keeper_.at_work():
        keeper_.wait_awake()
        assert keeper_.state == AWAKE
        clock.now += 3600
        poke(keeper_)
        assert keeper_.state == AWAKE
    assert fake.calls == [("start", "ray-keeper")]  # started by the keeper's thread, not the run's
    clock.now += 60
    poke(keeper_)
    wait_until(lambda: keeper_.state == ASLEEP, 10, "Ray asleep after the run")
    keeper_.wait_awake()  # and woken again by the next
    assert fake.calls == [("start", "ray-keeper"), ("stop", "ray-keeper"), ("start", "ray-keeper")]


def test_a_run_arriving_while_ray_starts_waits_for_that_start(keeper: tuple[RayKeeper, FakeRay, Clock]) -> None:
    keeper_, fake, clock = keeper
    fake.release.clear()
    keeper_.sign(clock.now)
    assert fake.started.wait(10)
    waited: list[str] = []
    waiter = threading.Thread(target=lambda: (keeper_.wait_awake(), waited.append(keeper_.state)))
    waiter.start()
    fake.release.set()
    waiter.join(10)
    assert waited == [AWAKE]
    assert [call for call, _ in fake.calls] == ["start"]


def test_a_failed_start_fails_the_run_and_readiness_and_the_next_run_tries_again(
    keeper: tuple[RayKeeper, FakeRay, Clock],
) -> None:
    keeper_, fake, _clock = keeper
    fake.fail = True
    with pytest.raises(RuntimeError, match="no Ray today"):
        keeper_.wait_awake()
    assert keeper_.state == FAILED and not keeper_.ready()
    fake.fail = False
    keeper_.wait_awake()
    assert keeper_.state == AWAKE and keeper_.ready()


def test_shut_down_stops_ray_under_a_run_and_does_not_start_it_again(
    keeper: tuple[RayKeeper, FakeRay, Clock],
) -> None:
    keeper_, fake, _clock = keeper
    with keeper_.at_work():
        keeper_.wait_awake()
        keeper_.shut_down()
        assert keeper_.state == ASLEEP
    assert fake.calls == [("start", "ray-keeper"), ("stop", "ray-keeper")]


SESSION_PROBE = """
import sys
from pathlib import Path
from driftloop.services.training.raycluster import nicer_own_session
changed = nicer_own_session(10)
print(changed, Path('/proc/self/autogroup').read_text().strip(), sep='|')
"""


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="Linux without autogroup scheduling")
def test_a_service_leading_its_session_makes_the_session_nicer_and_leaves_anyone_elses_alone() -> None:
    # Linux shares the CPU fairly between sessions, and a nice value counts only inside its session: what makes a
    # local Ray yield to the other services is the training service's session being nicer.
    import subprocess
    import sys

    def probe(start_new_session: bool = False) -> list[str]:
        command = [sys.executable, "-c", SESSION_PROBE]
        done = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=60, start_new_session=start_new_session
        )
        changed, group = done.stdout.strip().split("|")
        return [changed, group.split()[-1] if group else ""]

    assert probe(start_new_session=True) == ["True", "10"]  # as the launcher starts each service
    # A session of the system's default group (a CI runner's, say) shows no group at all: "" then.
    own = Path("/proc/self/autogroup").read_text().split()
    assert probe() == ["False", own[-1] if own else ""]  # inside this test run's session: not its to change


def test_only_a_small_known_fit_on_a_local_ray_that_is_not_awake_runs_without_it(tmp_path: Path) -> None:
    from driftloop.services.training.fit import FitJob
    from driftloop.services.training.raycluster import WAKING, fits_without_waiting_for_ray

    settings = Settings(home=tmp_path, ray={"local_fit_max_rows": 1000})

    def job(rows: int | None) -> FitJob:
        return FitJob(
            run_id="r",
            pipeline=None,  # type: ignore[arg-type]
            object_store=settings.object_store,
            feature_set_prefix="p/",
            feature_set_uri="file:///p/",
            dataset_version_id="s@v1",
            rows=rows,
        )

    assert fits_without_waiting_for_ray(settings, job(1000), ASLEEP)
    assert fits_without_waiting_for_ray(settings, job(10), WAKING)
    assert not fits_without_waiting_for_ray(settings, job(10), AWAKE)  # Ray is there: it fits
    assert not fits_without_waiting_for_ray(settings, job(1001), ASLEEP)  # too big to fit beside the services
    assert not fits_without_waiting_for_ray(settings, job(None), ASLEEP)  # unknown size
    joined = Settings(home=tmp_path, ray={"local_fit_max_rows": 1000, "address": "ray://cluster:10001"})
    assert not fits_without_waiting_for_ray(joined, job(10), ASLEEP)  # a cluster of one's own does the work
    off = Settings(home=tmp_path, ray={"local_fit_max_rows": 0})
    assert not fits_without_waiting_for_ray(off, job(10), ASLEEP)
