"""The one exception tree of driftloop. Every error a user can meet derives from DriftloopError."""

from __future__ import annotations


class DriftloopError(Exception):
    """Base class of every driftloop error."""


class ConfigError(DriftloopError):
    """A settings or pipeline file is wrong. The message names the key (and line) and how to fix it."""


class SchemaError(DriftloopError):
    """An Avro schema is invalid, unknown, or incompatible with an earlier version."""


class WireFormatError(SchemaError):
    """Bytes are not in the Confluent wire format (magic byte, schema id, Avro body).

    ``reason`` is a short machine-readable code (e.g. ``bad_magic_byte``) used for dead letters.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ValidationFailed(DriftloopError):
    """A record broke the stream's schema or a data-quality rule."""

    def __init__(self, reason: str, field: str | None, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field


class NotFoundError(DriftloopError):
    """A stream, model, dataset version, run or event does not exist."""


class StackError(DriftloopError):
    """The embedded stack could not start, or a component is not healthy."""
