"""training service: turns training requests into runs — a hyperparameter search on Ray Tune when the pipeline
asks for one, then a fit on Ray — with full tracking and provenance.

Consumes ``TrainingRequested`` (group ``driftloop-training``) and, in a broadcast group of its own,
``FeaturesMaterialized`` (a run waiting for rows after a change looks again when one is read). One request gives at
most one run (``runs.request_id`` is unique; a redelivered request is skipped). The run resolves its feature set (the
request's dataset version, or the newest complete one under ``features/<stream>/``); with ``model.search`` it runs
Optuna TPE (or random) + ASHA trials on Ray Tune scored on a validation part of the training split (``hpo``), then
refits the best configuration as a Ray task (``fit``; holdout by ``driftloop.contracts.evaluation.holdout_mask``).
Families: LightGBM, XGBoost, scikit-learn linear and random forest (``families``). It stores the artifact, feature list,
training-set reference, plots, trials and log in the object store with their sha256, and records params, metrics,
trials, code version, environment and resources. A rerun request (``rerun_of``) re-executes a run from its record.

Emits ``RunStateChanged`` for every state change (pending -> running -> completed | failed | aborted) and
``TrainingCompleted`` for a completed run; all are caused by the request event (a rerun publishes its own
``TrainingRequested``).

HTTP: ``GET /v1/runs?model=&state=&trigger=&rerun_of=``, ``GET /v1/runs/{run_id}``, ``GET /v1/runs/{run_id}/logs``,
``POST /v1/runs/{run_id}/abort``, ``POST /v1/runs/{run_id}/rerun``.
"""
