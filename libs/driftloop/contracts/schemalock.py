"""The released versions of every event schema (``schemas/compatibility.lock.json``) and the check that the
current schemas can still read every released version (BACKWARD_TRANSITIVE), so that a consumer deployed
with a newer schema reads events written by older producers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.schema import parse

from driftloop.contracts.schemas import SCHEMAS_DIR, event_schema, event_types

LOCK_FILE = SCHEMAS_DIR / "compatibility.lock.json"


def read_lock(path: Path = LOCK_FILE) -> dict[str, list[dict[str, Any]]]:
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def incompatibilities(reader: dict[str, Any], writer: dict[str, Any]) -> list[str]:
    result = ReaderWriterCompatibilityChecker().get_compatibility(parse(json.dumps(reader)), parse(json.dumps(writer)))
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    return sorted(str(m) for m in result.messages) or ["incompatible"]


def check_lock(path: Path = LOCK_FILE) -> list[str]:
    problems = []
    current = set(event_types())
    for event_type, versions in read_lock(path).items():
        if event_type not in current:
            problems.append(f"{event_type}: released, but its schema file is gone (consumers may still see it)")
            continue
        schema = event_schema(event_type)
        for i, old in enumerate(versions, 1):
            for message in incompatibilities(schema, old):
                problems.append(f"{event_type}: cannot read released version {i}: {message}")
    return problems


def update_lock(path: Path = LOCK_FILE) -> list[str]:
    lock = read_lock(path)
    added = []
    for event_type in event_types():
        schema = event_schema(event_type)
        versions = lock.setdefault(event_type, [])
        if not versions or versions[-1] != schema:
            versions.append(schema)
            added.append(f"{event_type} v{len(versions)}")
    path.write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    return added
