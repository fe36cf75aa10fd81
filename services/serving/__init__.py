"""serving service: online predictions with each model's champion, hot-swapped without a restart.

Consumes ``ModelPromoted`` with a fresh consumer group per process start (``driftloop-serving-<id>``), so each
replica replays the promotion history and ends on the current champion. Each promotion is loaded in a background
thread (artifact sha256 verified; a mismatch is refused and the old model keeps serving), swapped in atomically,
and announced with ``ServingSwitched``. Every predicted row is emitted as ``PredictionLogged``.

HTTP: ``POST /v1/models/{name}/predict``, ``GET /v1/models/{name}``, ``GET /v1/models``; ``/healthz`` shows
``models_loaded``.
"""
