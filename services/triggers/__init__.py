"""triggers service: decides when a model is retrained, and asks for it with ``TrainingRequested``.

Consumes (group ``driftloop-triggers``, one consumer):
- ``FeaturesMaterialized``: the latest dataset version per stream; a new-data cause (every version, or once
  ``triggers.new_data.every_n_rows`` new rows counted from ``DatasetVersionCreated``); fires pending drift requests.
- ``DriftDetected``, ``PerformanceDegraded``, ``ExternalTrigger``: causes.
- ``FeedbackReceived``: every ``triggers.labels.every_n_labels`` labels is a cause.
- ``ModelPromoted``, ``ModelRejected``: the champion (alarms about another version are stale); the gate decided,
  so causes queued behind a completed run fire (once, if still valid).
- ``RunStateChanged``: whether a training run of the model is active (pending/running); the end of the last one
  fires a request queued behind it (``triggers.queue_while_running``).
A background loop fires ``triggers.schedule.cron`` slots (one request per slot, also across restarts).

Emits ``TrainingRequested`` (cause = the causing event, so the cascade continues; a drift that waited for fresh
data keeps the DRIFT event as its cause; a schedule starts a cascade; ``change_started_at`` = where the alarming
window began) by the policy in the pipeline's ``triggers`` section: see ``policy.py`` (stale alarms, kinds enabled,
``policy.retrain_on`` signals, one active run per model, cooldown per model in wall time, event time or rows, causes
coalesced into one pending request that fires once when the cooldown or run ends, one decision per cause event).
Every decision is a ``training_requests`` row (requested, pending, coalesced, suppressed or stale, with why) and a
``RetrainDecision`` event on the timeline with its numbers. A guard alarm (``PerformanceDegraded``, ``reason:
guard``) about the champion rolls it back through the registry's API, then the policy decides about a retrain.

HTTP: ``POST /v1/models/{name}/retrain`` (manual; 404 unknown model, 409 no data yet or run active),
``GET /v1/models/{name}/requests`` (decisions, newest first), ``GET /v1/models/{name}/trigger-state``.

State (latest dataset per stream, champion/active runs/last request per model) is in the database, so a restart
loses nothing. One instance at a time: decisions are serialized in-process.
"""
