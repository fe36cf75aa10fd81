"""The prequential replay's streams and figures (bench/replay.py) without a stack: river's generated streams change
where they say, and the summary counts false alarms, detection delay, retrains on identical data and the rows
until a model trained on post-change data serves, from a small event log."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import replay


def test_sea_changes_its_concept_abruptly_at_the_given_row() -> None:
    frame = replay.generate("sea", 2000, change_at=1000, width=0, seed=3)
    assert list(frame.columns) == ["entity", "event_time", "x0", "x1", "x2", "label"]
    assert frame["event_time"].is_monotonic_increasing
    total = frame["x0"] + frame["x1"]
    # SEA: positive when x0 + x1 > threshold (8 before, 9.5 after; 5% noise). Between the two, only before.
    between = (total > 8.2) & (total < 9.3)
    before, after = frame.index < 1000, frame.index >= 1000
    assert frame.loc[between & before, "label"].mean() > 0.8
    assert frame.loc[between & after, "label"].mean() < 0.2


def test_a_gradual_change_mixes_the_concepts_around_the_change_row() -> None:
    frame = replay.generate("agrawal", 3000, change_at=1500, width=800, seed=3)
    assert len(frame) == 3000 and frame["label"].isin([0, 1]).all()
    assert set(frame.columns) >= {"entity", "event_time", "label"}


def event(kind: str, at: float, **payload: Any) -> dict[str, Any]:
    return {"event_type": kind, "occurred_at": at, "payload": payload}


def test_summary_counts_alarms_delays_retrains_and_identical_data() -> None:
    change_row, t0 = 150, 1_000.0
    served = [replay.Served(row=r, wall=t0 + r, version=1 if r < 230 else 2, prediction=0.8) for r in range(100, 300)]
    labels = np.ones(300, dtype=int)
    labels[::2] = 0
    baseline = np.where(labels == 1, 0.9, 0.1).astype(float)
    change_time = datetime(2026, 1, 1, tzinfo=UTC)
    events = [
        event("DriftDetected", t0 + 120, version=1, drifted_features=["x0"]),  # before the change: a false alarm
        event("PerformanceDegraded", t0 + 190, version=1, reason="threshold"),  # 40 rows after the change
        event("TrainingRequested", t0 + 191, trigger="performance", reason="auc 0.6 below 0.8"),
        event("DatasetVersionCreated", t0 + 200, dataset_version_id="s@v3", max_event_time=change_time.isoformat()),
        event("TrainingCompleted", t0 + 210, dataset_version_id="s@v3"),
        event("TrainingCompleted", t0 + 215, dataset_version_id="s@v3"),  # the same data again
        event("ModelRegistered", t0 + 220, version=2, dataset_version_id="s@v3"),
        event("ModelPromoted", t0 + 225, version=2, alias="champion", rollback=False),
        event("RetrainDecision", t0 + 191, decision="retrain"),
        event("RetrainDecision", t0 + 120, decision="suppressed"),
    ]
    summary = replay.summarize(labels, served, baseline, events, change_row, change_time - timedelta(seconds=1))
    assert summary["false_alarms"] == 1
    assert summary["detection_delay_rows"] == 40
    assert summary["retrains"] == 1 and summary["retrain_list"][0]["row"] == 191
    assert summary["retrains_on_identical_data"] == 1
    assert summary["rows_to_post_change_model"] == 80  # v2 (trained on data through the change) from row 230
    assert summary["seconds_to_post_change_model"] == 80.0  # a row a second
    assert summary["versions_promoted"] == [2]
    assert summary["decisions"] == {"retrain": 1, "suppressed": 1}
    assert summary["never_retrained_auc_after_change"] == pytest.approx(1.0)
    assert summary["served_auc_after_change"] == pytest.approx(0.5)  # a constant score ranks nothing
    assert summary["segments"]["before_change"]["rows"] == 50
    assert "false alarm at row 120" in replay.render(summary, "test")
    window = replay.summarize(
        labels, served, baseline, events, change_row, change_time - timedelta(seconds=1), window=100
    )["windows_after_change"]
    assert [(w["rows"], w["versions_served"]) for w in window] == [([150, 250], [1, 2]), ([250, 350], [2])]


def test_prequential_auc_ranks_scores_only_within_a_window() -> None:
    # Two models served one after the other, each ranking its rows perfectly but on other scales (the second's
    # scores all below the first's): one AUC over all rows mixes the scales, the windowed AUC does not.
    y = np.tile([0, 1], 200)
    first, second = np.where(y[:200] == 1, 0.9, 0.8), np.where(y[200:] == 1, 0.3, 0.1)
    served = np.concatenate([first, second])
    assert replay.auc(y, served) == pytest.approx(0.75)
    assert replay.windowed_auc(y, served, 100) == pytest.approx(1.0)
    assert replay.windowed_auc(np.ones(300), served[:300], 100) is None  # one class: no AUC


def test_post_change_target_learns_the_streams_own_new_concept() -> None:
    # The rotating hyperplane's seed is its concept: the target must come from the stream's own post-change
    # generator (rows it never drew), or it learns another hyperplane.
    frame = replay.generate("hyperplane", 3000, change_at=1000, width=0, seed=3)
    features = [c for c in frame.columns if c.startswith("x")]
    sample = replay.post_change_sample("hyperplane", 1500, skip=3000, seed=3)
    model = replay.fit(sample, features, "label")
    after = frame.iloc[1000:]
    assert replay.auc(after["label"].to_numpy(), model.predict(after[features].to_numpy(dtype="float64"))) > 0.9


def test_alarms_inside_a_gradual_transition_detect_the_change() -> None:
    t0 = 1_000.0
    served = [replay.Served(row=r, wall=t0 + r, version=1, prediction=0.5) for r in range(100, 400)]
    labels = np.tile([0, 1], 200)
    events = [event("PerformanceDegraded", t0 + 180, version=1, reason="change")]
    change_time = datetime(2026, 1, 1, tzinfo=UTC)
    strict = replay.summarize(labels, served, labels.astype(float), events, 200, change_time)
    assert (strict["false_alarms"], strict["detection_delay_rows"]) == (1, None)
    gradual = replay.summarize(labels, served, labels.astype(float), events, 200, change_time, stable_until=150)
    assert (gradual["false_alarms"], gradual["detection_delay_rows"]) == (0, -20)
