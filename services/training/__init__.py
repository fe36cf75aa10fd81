"""training service: turns training requests into runs, fitted on Ray, with full provenance.

Consumes ``TrainingRequested`` (group ``driftloop-training``). One request gives at most one run
(``runs.request_id`` is unique; a redelivered request is skipped). The run resolves its feature set (the
request's dataset version, or the newest complete one under ``features/<stream>/``), fits LightGBM in a Ray task
(holdout by ``driftloop.modeling.holdout_mask``), stores the artifact (with its sha256) and the run log in the
object store, and records params, metrics, code version, environment and resources.

Emits ``RunStateChanged`` for every state change (pending -> running -> completed | failed) and
``TrainingCompleted`` for a completed run; both are caused by the request event.

HTTP: ``GET /v1/runs?model=&state=&trigger=``, ``GET /v1/runs/{run_id}``, ``GET /v1/runs/{run_id}/logs``.
"""
