"""features service: turns dataset versions into feature sets, offline and online.

Consumes ``DatasetVersionCreated`` (group ``driftloop-features``): reads the version's Parquet with Spark,
computes the pipeline's features with ``driftloop.contracts.featuredefs.compute_features`` per batch
(``mapInPandas``, so offline and online features come from one function), writes the offline feature set as
Parquet under ``features/<stream>/v<N>/`` (plus ``_manifest.json``, written last, marking it complete), upserts
the latest values per entity into the online store (``online_features``), and emits ``FeaturesMaterialized``.

Aggregate features (per-entity windows) are computed in Spark into the offline store of feature values
(``features/<stream>/values/v<N>/``); the training set is their point-in-time join with the dataset's rows.

Also consumes every stream topic ``driftloop.stream.<name>`` (faust app, group ``driftloop-features-stream``, a
worker thread of this process, ``settings.features.streaming``): each record updates its entity's running
aggregates in the online store within seconds; durable state in ``feature_stream_events``, keyed by offset.

HTTP: ``GET /v1/features`` (feature definitions and materialized versions per stream) and
``POST /v1/features/online`` (latest feature values of entities).
"""
