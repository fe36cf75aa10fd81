"""Change detection on a version's labeled errors (``monitor.performance.change_detector: adwin``).

A tumbling performance window alarms only once a whole window is past its threshold, and says only that the window
was bad. A change detector reads the errors one label at a time: river's ADWIN keeps a window of the version's
errors and cuts it where its older and newer parts differ by more than chance allows (``adwin_delta``). When it
cuts and the error rose, the change is located in the errors since the last cut (the split that best explains them
as two levels: the largest between-segment sum of squares, as in binary segmentation), and the alarm says where it
began (the event time of the first error after the split), so that training can wait for post-change rows only.

Errors: classifiers 0/1 (the prediction at ``decision_threshold`` against the label), regressors the absolute error.
The detectors live in memory; after a restart a version's detector is fed again from its stored labeled
predictions (no alarm while it is rebuilt), so a restart neither repeats an old alarm nor forgets the level.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from river.drift import ADWIN

# Errors kept to locate a change (the newest); a change is located within them.
MAX_SEGMENT = 20_000
# The fewest errors on each side of a located change (a split at the very edge explains nothing).
MIN_SIDE = 20


@dataclass(frozen=True)
class Change:
    """A rise of a version's error located by the detector."""

    metric: str  # error_rate (classifiers) or mae (regressors)
    before: float  # mean error before the change
    after: float  # mean error since
    rows_after: int  # labeled predictions since the change
    started_at: float  # event time (epoch seconds) of the first labeled prediction after the change
    detected_at: float  # event time of the labeled prediction that made the detector cut


def error_of(actual: float, prediction: float, task: str, decision_threshold: float) -> float:
    if task == "classification":
        return float((prediction >= decision_threshold) != (actual >= 0.5))
    return abs(float(actual) - float(prediction))


@dataclass
class ErrorDetector:
    """One version's detector and the errors since its last cut."""

    metric: str
    delta: float
    clock: int = 32  # labels between two looks for a cut (monitor.performance.adwin_clock)
    adwin: ADWIN = field(init=False)
    segment: deque[tuple[float, float]] = field(init=False)  # (error, event time)

    def __post_init__(self) -> None:
        self.adwin = ADWIN(delta=self.delta, clock=self.clock)
        self.segment = deque(maxlen=MAX_SEGMENT)

    def update(self, error: float, event_time: float) -> Change | None:
        """Add one error; a located rise of the error when the detector cuts, else None."""
        self.segment.append((error, event_time))
        self.adwin.update(error)
        if not self.adwin.drift_detected:
            return None
        errors = np.fromiter((e for e, _ in self.segment), dtype="float64", count=len(self.segment))
        split = locate(errors)
        if split is None:
            return None
        before, after = float(errors[:split].mean()), float(errors[split:].mean())
        times = [t for _, t in self.segment]
        # What follows the change is the level the next change is measured against.
        self.segment = deque(list(self.segment)[split:], maxlen=MAX_SEGMENT)
        if after <= before:  # the error fell: a better world, no alarm
            return None
        return Change(
            metric=self.metric,
            before=before,
            after=after,
            rows_after=len(errors) - split,
            started_at=min(times[split:]),
            detected_at=times[-1],
        )


def locate(errors: np.ndarray) -> int | None:
    """Index of the first error after the most likely mean shift in ``errors`` (None: too few on either side)."""
    n = len(errors)
    if n < 2 * MIN_SIDE:
        return None
    cumulative = np.cumsum(errors)
    total = cumulative[-1]
    k = np.arange(MIN_SIDE, n - MIN_SIDE + 1)  # candidate splits: errors[:k] | errors[k:]
    left_mean = cumulative[k - 1] / k
    right_mean = (total - cumulative[k - 1]) / (n - k)
    between = k * (n - k) / n * (left_mean - right_mean) ** 2
    return int(k[int(np.argmax(between))])
