"""monitor service: feature drift of served predictions against the champion's training data.

Consumes (group ``driftloop-monitor``, one consumer so that a model's events keep their order):
- ``ModelPromoted`` (alias ``champion``): loads a seeded sample of up to ``monitor.reference_rows`` rows of the new
  champion's training feature set as the reference, and starts a fresh window for the model.
- ``PredictionLogged``: for the champion version, computes the model's features from the inputs with
  ``driftloop.featuredefs.compute_features`` and appends them to the model's window. A full window
  (``monitor.window_size`` rows) is tested feature by feature against the reference (KS for numeric, chi-square
  for categorical), corrected for multiple tests (Bonferroni or Holm), stored as a ``DriftReport`` and the next
  window starts (tumbling).

Emits ``DriftDetected`` (a new cascade: drift is a root cause) when at least ``monitor.min_drifted_features``
features have a corrected p-value below ``monitor.alpha``.

HTTP: ``GET /v1/monitor/{model}`` (watched version, reference, window fill), ``GET /v1/monitor/{model}/drift``
(recent reports). Prometheus: last statistic and corrected p-value per feature, window fill.

Windows are in memory: a restart starts a new, empty window (numbered after the last stored one). The watched
champion is stored in ``monitored_models``, so its reference is reloaded after a restart.
"""
