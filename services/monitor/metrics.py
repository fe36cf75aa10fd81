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
    "Logged predictions not added to a window, by reason (not_champion, no_reference, invalid_inputs).",
    ["model", "reason"],
)
