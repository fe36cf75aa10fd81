"""monitor service: drift, data quality and performance of served predictions against the champion.

Consumes with one faust-streaming agent in consumer group ``driftloop-monitor-faust`` (one, so that a model's
events keep their order; a supervisor replaces an app that crashed or holds no assignment; see ``streaming.py``):
- ``ModelPromoted`` (alias ``champion``): loads a seeded sample of up to ``monitor.reference_rows`` rows of the new
  champion's training feature set as the reference.
- ``PredictionLogged``: for the champion version, computes the model's features from the inputs with
  ``driftloop.contracts.featuredefs.compute_features`` and stores them (keyed by event id) in ``monitor_observations``.
  Windows by count or event time, tumbling or hopping (``monitor.window_by``, ``window_size``,
  ``window_seconds``, ``hop``) are cut from those rows; each closed window gets a ``DriftReport``: per feature KS
  and Wasserstein (numeric) or chi-square (categorical), PSI (both), corrected for multiple tests (Bonferroni or
  Holm) and gated by optional effect-size thresholds; prediction drift against the champion's first window; data
  quality of the live inputs (nulls, out of range, not allowed, unseen categories).
- ``FeedbackReceived``: joined with the stored prediction by request id and row; tumbling windows of
  ``monitor.performance.window_size`` labeled predictions OF ONE VERSION give a ``PerformanceReport`` (metrics by
  ``driftloop.contracts.evaluation``, scikit-learn's, as the gate). The new champion's first window is also scored
  with the previous champion's artifact on the same rows (the guard, ``triggers.policy.guard``).

Per version: a promotion ends the old version's windows and starts the new one's with its own reference; every
alarm names its version (the triggers drop alarms about a version that is no longer champion as stale). Drift
windows of classifiers carry the performance estimated from their predicted probabilities (CBPE) against the
version's first window, and the version's last measured performance: the retrain policy's confirmation.

Emits ``DriftDetected`` (a new cascade: drift is a root cause) when at least ``monitor.min_drifted_features``
features drift, or when the window's predictions drift from the champion's first window past
``monitor.prediction_drift`` (``prediction_drifted: true``, with the ``prediction_test``), and
``PerformanceDegraded`` (a root cause too) when a performance window passes ``monitor.performance.threshold``
(``reason: threshold``) or the guard finds the new champion worse than the previous one (``reason: guard``, with
``previous_version`` / ``previous_value``).

HTTP: ``GET /v1/monitor/{model}`` (watched version, reference, window fill), ``GET /v1/monitor/{model}/drift``,
``/quality``, ``/performance`` (history, newest first). Prometheus: per-feature statistics, p-values, PSI,
Wasserstein, prediction drift, quality and performance gauges, window fill.

Window state is in the database, not in memory or a faust Table (which the embedded broker cannot restore): a
restart, even ``kill -9``, neither loses nor double-counts a prediction, and reports the same windows.
"""
