"""The change detector on labeled errors: a rise is found soon and located near where it began; a fall, or a stable
error, never alarms."""

from __future__ import annotations

import numpy as np

from driftloop.services.monitor.changes import ErrorDetector, locate


def errors(rng: np.random.Generator, rates: list[tuple[int, float]]) -> list[float]:
    return [float(rng.random() < rate) for rows, rate in rates for _ in range(rows)]


def run(stream: list[float]) -> list[tuple[int, object]]:
    detector = ErrorDetector(metric="error_rate", delta=0.002)
    found = []
    for i, error in enumerate(stream):
        change = detector.update(error, event_time=1_000.0 + i)
        if change is not None:
            found.append((i, change))
    return found


def test_a_rise_is_detected_within_a_few_hundred_labels_and_located_near_its_start() -> None:
    rng = np.random.default_rng(3)
    found = run(errors(rng, [(1500, 0.08), (1500, 0.2)]))
    assert found, "the rise from 8% to 20% errors was not detected"
    at, change = found[0]
    assert 1500 <= at < 1500 + 400
    assert abs(change.started_at - (1_000.0 + 1500)) <= 150  # located within 150 labels of the true start
    assert change.before < 0.12 < 0.15 < change.after
    assert change.rows_after == at - (change.started_at - 1_000.0) + 1


def test_a_stable_error_or_a_fall_never_alarms() -> None:
    rng = np.random.default_rng(4)
    assert run(errors(rng, [(4000, 0.1)])) == []
    assert run(errors(rng, [(1500, 0.25), (1500, 0.05)])) == []


def test_locate_finds_the_split_of_two_levels_and_refuses_too_few() -> None:
    assert locate(np.array([0.0] * 100 + [1.0] * 60)) == 100
    assert locate(np.array([1.0] * 30)) is None


def test_a_detector_that_looks_at_every_label_sees_the_rise_no_later() -> None:
    # adwin_clock 1: ADWIN looks for a cut at each label instead of every 32nd; over 10 streams it is never later
    # and earlier in sum, and it still never alarms on a stable error.
    def first_alarm(stream: list[float], clock: int) -> int:
        detector = ErrorDetector(metric="error_rate", delta=0.002, clock=clock)
        return next(i for i, e in enumerate(stream) if detector.update(e, 1_000.0 + i) is not None)

    streams = [errors(np.random.default_rng(seed), [(1500, 0.07), (1500, 0.18)]) for seed in range(10)]
    every, default = [first_alarm(s, 1) for s in streams], [first_alarm(s, 32) for s in streams]
    assert all(e <= d for e, d in zip(every, default, strict=True))
    assert sum(every) < sum(default)
    stable = ErrorDetector(metric="error_rate", delta=0.002, clock=1)
    rng = np.random.default_rng(11)
    assert all(stable.update(e, float(i)) is None for i, e in enumerate(errors(rng, [(4000, 0.07)])))
