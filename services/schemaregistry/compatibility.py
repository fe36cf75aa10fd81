"""Avro compatibility by the Apache ``avro`` package's reader/writer checker, per Confluent's levels.

The top-level record's name and namespace are not part of a subject's contract (the subject names the data): a
schema that differs from another only there is resolved as if the reader declared the writer's full name as an
alias, as the Avro specification's alias rule allows. Any other difference is checked as usual.
"""

from __future__ import annotations

import json

from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.errors import AvroException
from avro.schema import NamedSchema, Schema, parse

from .errors import InvalidSchema

LEVELS = (
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)


def parse_avro(schema_text: str) -> Schema:
    try:
        return parse(schema_text)
    except (AvroException, ValueError, TypeError) as exc:
        raise InvalidSchema(f"Invalid schema: {exc}") from exc


def _aliased(reader: Schema, writer: Schema) -> Schema:
    """``reader`` with the writer's full name as an alias of its top-level record, when both are records of
    different names; else ``reader`` itself."""
    if not (isinstance(reader, NamedSchema) and isinstance(writer, NamedSchema)):
        return reader
    if reader.type != "record" or writer.type != "record" or reader.fullname == writer.fullname:
        return reader
    document = reader.to_json()
    if not isinstance(document, dict):
        return reader
    document["aliases"] = sorted({*document.get("aliases", []), writer.fullname})
    return parse(json.dumps(document))


def _can_read(reader: Schema, writer: Schema) -> list[str]:
    result = ReaderWriterCompatibilityChecker().get_compatibility(_aliased(reader, writer), writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    return [str(m) for m in result.messages] or ["incompatible"]


def check(level: str, candidate: str, existing: list[str]) -> list[str]:
    """Problems that stop ``candidate`` from being registered after ``existing`` (oldest first) under
    ``level``; empty when compatible. Non-transitive levels compare with the newest version only."""
    if level == "NONE" or not existing:
        return []
    new = parse_avro(candidate)
    olds = [parse_avro(s) for s in (existing if level.endswith("_TRANSITIVE") else existing[-1:])]
    problems: list[str] = []
    for old in olds:
        label = "an earlier version" if len(olds) > 1 else "the latest version"
        if level.startswith(("BACKWARD", "FULL")):
            problems += [f"new schema cannot read data written with {label}: {m}" for m in _can_read(new, old)]
        if level.startswith(("FORWARD", "FULL")):
            problems += [f"{label} cannot read data written with the new schema: {m}" for m in _can_read(old, new)]
    return problems
