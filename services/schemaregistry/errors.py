"""The schema registry's errors: each one is in driftloop's tree (its HTTP status and ``code``) and carries the
number Confluent gives it (``error_code``). The registry answers them in Confluent's shape,
``{"error_code": 40401, "message": "..."}`` (``api.registry_error_response``): the stock
``confluent_kafka.schema_registry`` client reads that body."""

from __future__ import annotations

from typing import ClassVar

from driftloop.errors import ConflictError, DriftloopError, InvalidRequest, NotFoundError, SchemaError


class RegistryError(DriftloopError):
    """An error of the schema registry; a subclass names its HTTP status (by its tree class) and Confluent's code."""

    error_code: ClassVar[int] = 50001
    default_code = "registry_error"


class SubjectNotFound(RegistryError, NotFoundError):
    error_code = 40401
    default_code = "subject_not_found"


class VersionNotFound(RegistryError, NotFoundError):
    error_code = 40402
    default_code = "version_not_found"


class SchemaNotFound(RegistryError, NotFoundError):
    error_code = 40403
    default_code = "schema_not_found"


class SubjectCompatibilityNotFound(RegistryError, NotFoundError):
    """The subject has no compatibility level of its own (ask with ``defaultToGlobal=true`` for the global one)."""

    error_code = 40408
    default_code = "subject_compatibility_not_found"


class IncompatibleSchema(RegistryError, ConflictError):
    """The schema breaks the subject's compatibility level against earlier versions."""

    error_code = 409
    default_code = "incompatible_schema"


class InvalidSchema(RegistryError, SchemaError):
    """Not an Avro schema the registry can take (not JSON, not Avro, another type, references)."""

    error_code = 42201
    default_code = "invalid_schema"


class InvalidVersion(RegistryError, InvalidRequest):
    error_code = 42202
    default_code = "invalid_version"


class InvalidCompatibilityLevel(RegistryError, InvalidRequest):
    error_code = 42203
    default_code = "invalid_compatibility_level"


class RegistryStoreError(RegistryError):
    """The store could not complete the operation (e.g. concurrent registrations kept winning); retrying helps."""

    error_code = 50001
    default_code = "store_error"
