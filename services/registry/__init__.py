"""registry service: the model registry and its promotion gate.

Consumes ``TrainingCompleted`` (group ``driftloop-registry``): registers the next version of the model with its
lineage (run, dataset version, feature set, trigger, cause chain, cascade) and emits ``ModelRegistered``. Then
gates it: challenger and current champion are scored with the pipeline's gate metric on the same holdout rows of
the challenger's feature set. A better challenger (by ``gate.min_improvement``; the first version against
``gate.first_version_threshold``) takes the ``champion`` alias in one transaction and ``ModelPromoted`` is
emitted; otherwise ``ModelRejected``, and the champion stays.

HTTP: ``GET /v1/models``, ``/v1/models/{name}/versions``, ``/v1/models/{name}/versions/{version}``,
``/v1/models/{name}/aliases/{alias}``.
"""
