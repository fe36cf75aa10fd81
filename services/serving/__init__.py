"""serving service: online predictions with each model's champion, hot-swapped without a restart, rolled out by
canary or shadow with automatic rollback, and the actual outcomes joined to the predictions.

Consumes ``ModelPromoted`` (alias ``champion``; other aliases are ignored) with a fresh consumer group per
process start (``driftloop-serving-<id>``), so each replica replays the promotion history and ends on the
current champion. Each promotion is loaded in a background thread (artifact sha256 verified; a mismatch is
refused and the old model keeps serving). Promotions from before the replica started, rollbacks and pipelines
with ``serving.rollout.mode: none`` are swapped in atomically at once. Later promotions of a newer version, when
the pipeline asks for ``canary`` or ``shadow``, start a rollout on this replica (``rollout``): the challenger gets
a share of the requests (canary, stepped up on good numbers) or scores a copy of each (shadow) and becomes the
champion when every step passes; it is rolled back by itself when its error rate, latency or mean prediction is
worse than the champion's past the thresholds. Also consumes ``RolloutRolledBack``: a rollback on another
replica stops the same rollout here, and so does the registry moving ``champion`` back to the served version
(it follows rollbacks). ``RolloutRolledBack.origin`` says why a replica stopped: ``verdict``, ``followed``,
``superseded`` or ``champion_moved``; the registry acts on verdicts only.

Emits ``ServingSwitched`` (the replica answers with another version), ``RolloutStepped`` (started, stepped,
completed), ``RolloutRolledBack``, ``PredictionLogged`` for every answered row and ``FeedbackReceived`` for every
actual outcome posted. Tables: ``serving_predictions`` and ``serving_feedback`` (joined on request id and row).

HTTP: ``POST /v1/models/{name}/predict`` (``instances`` of raw fields, or ``entities`` resolved through the
features service's online store), ``POST|GET /v1/models/{name}/feedback``, ``GET /v1/models/{name}``,
``GET /v1/models``; the Open Inference Protocol v2: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``,
``/v2/models/{name}``, ``/v2/models/{name}/ready``, ``POST /v2/models/{name}/infer``. ``/healthz`` shows
``models_loaded`` and running rollouts.
"""
