"""registry service: the model registry and its promotion gate.

Consumes ``TrainingCompleted`` (group ``driftloop-registry``): registers the next version of the model with its
lineage (run, dataset version, feature set, trigger, cause chain, cascade) and emits ``ModelRegistered``. Then
gates it: challenger and current champion are scored with the pipeline's gate metric on the same holdout rows of
the challenger's feature set. A better challenger (by ``gate.min_improvement``; the first version against
``gate.first_version_threshold``; never below ``gate.floor``) takes the ``champion`` alias in one transaction and
``ModelPromoted`` is emitted; otherwise ``ModelRejected``, and the champion stays.

Consumes ``RolloutRolledBack`` (same group): when a serving replica judged a canary/shadow challenger worse
(``origin: verdict``), ``champion`` moves back to the version serving kept (``ModelPromoted``, ``rollback: true``,
``moved_by: serving``, caused by the rollback), once per rolled-back promotion; if the alias moved since that
promotion it stays and ``AliasMoveRefused`` says why.

Aliases (``champion``, ``challenger``, any name) also move by HTTP, atomically, each move a ``ModelPromoted``
with ``alias``, ``moved_by`` (token name), ``reason`` and ``rollback``; serving follows ``champion`` only.

HTTP: ``GET /v1/models``, ``GET /v1/models/{name}/versions[/{version}]``, ``PATCH /v1/models/{name}/versions/{v}``
(tags, description), ``GET /v1/models/{name}/aliases[/{alias}]``, ``PUT /v1/models/{name}/aliases/{alias}``,
``POST /v1/models/{name}/rollback``. Mutating calls need an admin token (``driftloop.runtime.security``).
"""
