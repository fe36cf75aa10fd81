"""Contracts: what services agree on, defined once, with no I/O beyond reading the project's own schema files.

- ``topics``: every topic and the event type it carries; ``events``: the envelope and events;
- ``payloads``: one typed payload class per event type, generated from the schemas by ``codegen``;
- ``schemas`` / ``schemalock``: the Avro event schemas (``schemas/events/*.avsc``) and their compatibility lock;
- ``fieldtypes``: the field-type table from which Avro, Arrow, Spark, pandas, OIP and validation types derive;
- ``pipeline``, ``searchspace``, ``featuredefs``: a user's pipeline config, its search space and its features;
- ``aliases``: the model aliases services agree on (the champion);
- ``artifact`` / ``evaluation``: the model artifact format, the holdout split and the metrics;
- ``layout``: where things live in the object store; ``settings``: the platform's typed settings;
- ``oip``: Open Inference Protocol (v2) tensors <-> rows of raw fields, shared by serving and exported models.

Import what you need from the submodule (``from driftloop.contracts.topics import MODEL_PROMOTED``).
"""

__all__ = [
    "aliases",
    "artifact",
    "codegen",
    "evaluation",
    "events",
    "featuredefs",
    "layout",
    "oip",
    "payloads",
    "pipeline",
    "schemalock",
    "schemas",
    "searchspace",
    "settings",
    "topics",
]
