"""features service: turns dataset versions into feature sets, offline and online.

Consumes ``DatasetVersionCreated`` (group ``driftloop-features``): reads the version's Parquet with Spark,
computes the pipeline's features with ``driftloop.featuredefs.compute_features`` per batch (``mapInPandas``, so
offline and online features come from one function), writes the offline feature set as Parquet under
``features/<stream>/v<N>/`` (plus ``_manifest.json``, written last, marking it complete), upserts the latest
values per entity into the online store (``online_features``), and emits ``FeaturesMaterialized``.

HTTP: ``GET /v1/features`` (feature definitions and materialized versions per stream) and
``POST /v1/features/online`` (latest feature values of entities).
"""
