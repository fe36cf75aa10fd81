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
