"""schemaregistry: a Confluent-compatible schema registry (REST API), stored in the platform database.

Consumes nothing, emits nothing: producers and consumers of every topic talk to it over HTTP with the stock
``confluent_kafka.schema_registry.SchemaRegistryClient``. A deployment with a Confluent registry points
``schema_registry.url`` at that one and sets ``schema_registry.embedded=false``; nothing else changes.
"""
