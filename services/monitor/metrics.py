"""Prometheus metrics of the monitor (module level: one registration per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

DRIFT_STATISTIC = Gauge(
    "driftloop_monitor_drift_statistic",
    "Test statistic of the last closed window per feature (KS D or chi-square).",
    ["model", "feature", "test"],
)
DRIFT_ADJUSTED_P_VALUE = Gauge(
    "driftloop_monitor_drift_adjusted_p_value",
    "Corrected p-value of the last closed window per feature.",
    ["model", "feature"],
)
WINDOW_FILL = Gauge("driftloop_monitor_window_fill", "Rows in the model's current window.", ["model"])
WINDOWS_CLOSED = Counter("driftloop_monitor_windows_closed", "Windows tested, by outcome.", ["model", "drifted"])
PREDICTIONS_SKIPPED = Counter(
    "driftloop_monitor_predictions_skipped",
    "Logged predictions not windowed, by reason (not_champion, no_reference, invalid_inputs, duplicate, late).",
    ["model", "reason"],
)
DRIFT_PSI = Gauge("driftloop_monitor_drift_psi", "PSI of the last closed window per feature.", ["model", "feature"])
DRIFT_WASSERSTEIN = Gauge(
    "driftloop_monitor_drift_wasserstein",
    "Wasserstein distance (in reference standard deviations) of the last closed window per numeric feature.",
    ["model", "feature"],
)
PREDICTION_DRIFT_STATISTIC = Gauge(
    "driftloop_monitor_prediction_drift_statistic",
    "KS statistic of the last window's predictions against the champion's first window.",
    ["model"],
)
PREDICTION_DRIFT_PSI = Gauge(
    "driftloop_monitor_prediction_drift_psi",
    "PSI of the last window's predictions against the champion's first window.",
    ["model"],
)
PREDICTION_DRIFT = Gauge(
    "driftloop_monitor_prediction_drift",
    "1 when the last closed window's predictions drifted past monitor.prediction_drift (an alarm), else 0.",
    ["model"],
)
QUALITY_NULL_RATE = Gauge(
    "driftloop_monitor_quality_null_rate",
    "Share of nulls per input field in the last closed window.",
    ["model", "field"],
)
QUALITY_ISSUES = Gauge(
    "driftloop_monitor_quality_issues",
    "Values out of range, not allowed, or of an unseen category in the last closed window.",
    ["model", "kind"],
)
PERFORMANCE = Gauge(
    "driftloop_monitor_performance", "Metric of the last window of labeled predictions.", ["model", "metric"]
)
PERFORMANCE_WINDOWS = Counter(
    "driftloop_monitor_performance_windows",
    "Windows of labeled predictions evaluated, by outcome.",
    ["model", "degraded"],
)
FEEDBACK_SKIPPED = Counter(
    "driftloop_monitor_feedback_skipped",
    "Feedback not (yet) joined with a prediction, by reason (unknown_model, prediction_unknown).",
    ["model", "reason"],
)
CHANGES_DETECTED = Counter(
    "driftloop_monitor_changes_detected",
    "Rises of a version's labeled error found by its change detector (monitor.performance.change_detector).",
    ["model"],
)
