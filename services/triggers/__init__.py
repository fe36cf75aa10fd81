"""triggers service: decides when a model is retrained, and asks for it with ``TrainingRequested``.

Consumes (group ``driftloop-triggers``, one consumer):
- ``FeaturesMaterialized``: the latest dataset version per stream; a new-data cause; fires pending drift requests.
- ``DriftDetected``, ``ExternalTrigger``: causes.
- ``ModelPromoted``, ``ModelRejected``: whether the model has a champion.
- ``RunStateChanged``: whether a training run of the model is active (pending/running).

Emits ``TrainingRequested`` (cause = the causing event, so the cascade continues; a drift that waited for fresh
data keeps the DRIFT event as its cause) by the policy in the pipeline's ``triggers`` section: see ``policy.py``
(kinds enabled, only_without_champion, wait_for_fresh_data, cooldown, one active run per model, one decision per
cause event). Every decision is a ``training_requests`` row (requested, pending or suppressed, with why).

HTTP: ``POST /v1/models/{name}/retrain`` (manual; 404 unknown model, 409 no data yet or run active),
``GET /v1/models/{name}/requests`` (decisions, newest first), ``GET /v1/models/{name}/trigger-state``.

State (latest dataset per stream, champion/active runs/last request per model) is in the database, so a restart
loses nothing. One instance at a time: decisions are serialized in-process.
"""
