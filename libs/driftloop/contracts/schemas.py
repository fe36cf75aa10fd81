"""Load the Avro event schemas from ``schemas/events`` (the contract) and derive stream record schemas."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

from driftloop.errors import SchemaError

SCHEMAS_DIR = Path(__file__).resolve().parents[3] / "schemas"
EVENTS_DIR = SCHEMAS_DIR / "events"
ENVELOPE = "driftloop.events.Envelope"


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SchemaError(f"cannot read schema {path}: {exc}") from exc


@cache
def event_schema(event_type: str) -> dict[str, Any]:
    """The self-contained schema (envelope inlined) of an event type, as registered in the registry."""
    path = EVENTS_DIR / f"{event_type}.avsc"
    if not path.is_file():
        raise SchemaError(f"no schema for event type {event_type!r}: expected {path}")
    schema = _read(path)
    envelope = _read(EVENTS_DIR / f"{ENVELOPE}.avsc")
    for field in schema["fields"]:
        if field["type"] == ENVELOPE:
            field["type"] = envelope
    fastavro.parse_schema(schema)  # raises on an invalid schema
    return schema


def event_types() -> list[str]:
    return sorted(p.stem for p in EVENTS_DIR.glob("*.avsc") if p.stem != ENVELOPE)


def canonical(schema: dict[str, Any]) -> str:
    return json.dumps(schema, separators=(",", ":"), sort_keys=False)
