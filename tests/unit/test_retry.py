"""The one retry helper: how often it calls, which errors it retries, how long it waits, what it raises."""

from __future__ import annotations

import random

import pytest

from driftloop.clients.retry import Backoff, retry


class Flaky:
    """Raises ``errors`` one after the other, then returns ``"done"``; counts its calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_retries_the_named_errors_until_the_call_succeeds() -> None:
    waits: list[float] = []
    fn = Flaky(ConnectionError("1"), ConnectionError("2"))
    assert retry(fn, attempts=3, retry_on=(ConnectionError,), sleep=waits.append) == "done"
    assert fn.calls == 3
    assert len(waits) == 2  # a wait between calls, none after the last


def test_the_last_error_is_raised_when_the_attempts_run_out() -> None:
    fn = Flaky(*(TimeoutError(f"try {i}") for i in range(1, 6)))
    with pytest.raises(TimeoutError, match="try 4"):
        retry(fn, attempts=4, retry_on=(TimeoutError,), sleep=lambda _: None)
    assert fn.calls == 4


def test_other_errors_go_straight_through() -> None:
    waits: list[float] = []
    fn = Flaky(ValueError("not retried"))
    with pytest.raises(ValueError, match="not retried"):
        retry(fn, attempts=5, retry_on=(ConnectionError,), sleep=waits.append)
    assert fn.calls == 1 and waits == []


def test_subclasses_of_a_named_error_are_retried() -> None:
    fn = Flaky(ConnectionRefusedError())
    assert retry(fn, attempts=2, retry_on=(OSError,), sleep=lambda _: None) == "done"


def test_one_attempt_means_no_retry() -> None:
    fn = Flaky(ConnectionError())
    with pytest.raises(ConnectionError):
        retry(fn, attempts=1, retry_on=(ConnectionError,), sleep=lambda _: None)
    assert fn.calls == 1
    with pytest.raises(ValueError):
        retry(fn, attempts=0, retry_on=(ConnectionError,))


def test_delays_grow_exponentially_up_to_the_maximum() -> None:
    waits: list[float] = []
    fn = Flaky(*(ConnectionError() for _ in range(6)))
    retry(fn, attempts=7, retry_on=(ConnectionError,), first_delay=0.5, max_delay=3.0, jitter=0, sleep=waits.append)
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_on_retry_sees_each_failed_attempt_with_its_error_and_delay() -> None:
    seen: list[tuple[int, str, float]] = []
    fn = Flaky(ConnectionError("a"), ConnectionError("b"))
    retry(
        fn,
        attempts=3,
        retry_on=(ConnectionError,),
        first_delay=1.0,
        jitter=0,
        on_retry=lambda attempt, exc, delay: seen.append((attempt, str(exc), delay)),
        sleep=lambda _: None,
    )
    assert seen == [(1, "a", 1.0), (2, "b", 2.0)]


def test_jittered_delays_stay_within_their_bounds() -> None:
    backoff = Backoff(first_delay=0.1, max_delay=2.0, jitter=0.5, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(200)]
    undisturbed = [min(2.0, 0.1 * 2**n) for n in range(200)]
    assert all(0.5 * u <= d <= u for d, u in zip(delays, undisturbed, strict=True))
    assert len(set(delays)) > 100  # jitter: not in step with another writer's delays
    assert max(delays) <= 2.0


def test_backoff_starts_again_after_a_reset_and_never_overflows() -> None:
    backoff = Backoff(first_delay=1.0, max_delay=30.0, jitter=0)
    assert [backoff.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 1.0
    backoff.attempt = 10_000
    assert backoff.next_delay() == 30.0


def test_backoff_refuses_settings_that_make_no_sense() -> None:
    with pytest.raises(ValueError):
        Backoff(first_delay=2.0, max_delay=1.0)
    with pytest.raises(ValueError):
        Backoff(jitter=1.5)
