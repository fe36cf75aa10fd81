"""ingestion service: records in, landed Parquet and dataset versions out.

Consumes each pipeline's stream topic (``driftloop.stream.<stream>``, Avro in the Confluent wire format, consumer
group ``driftloop-ingestion``) and JSON batches on ``POST /v1/streams/{stream}/records``. Validates every record
(wire format, schema, event time, size, the pipeline's quality rules); good records land in micro-batches as
Parquet in the object store, bad ones become dead letters. Cuts immutable dataset versions with Spark
(automatically every ``dataset.cut_every_rows`` rows, or on demand).

Emits: ``RecordRejected`` (driftloop.records.rejected) per dead letter, ``DatasetVersionCreated``
(driftloop.datasets.version-created) per dataset version. Consumes no driftloop events.
Owns the tables ``landed_batches``, ``dead_letters``, ``dataset_versions``, ``ingestion_idempotency_keys``.

Guarantees and operations: exact counts under crashes and rebalances (landed objects named by source offsets or
``Idempotency-Key``; a source is never landed twice), the dead-letter queue (``/v1/streams/{s}/dead-letters``,
replay of fixed records), schema evolution by writer/reader resolution into the stream's current schema,
dataset versions with sources, diff, uniqueness and freshness checks, and retention compaction.
"""
