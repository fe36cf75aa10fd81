"""The registry's compatibility check: the top-level record name is not part of a subject's contract (resolved as
an alias); any other difference is still refused, with what differs."""

from __future__ import annotations

import json

from driftloop.services.schemaregistry.compatibility import check

OURS = {
    "type": "record",
    "name": "Weather",
    "namespace": "driftloop.streams",
    "fields": [{"name": "station", "type": "string"}, {"name": "rain_mm", "type": "double"}],
}


def test_a_schema_that_differs_only_in_record_name_is_compatible_at_every_level() -> None:
    theirs = {**OURS, "name": "RainfallObservation", "namespace": "org.example"}
    for level in ("BACKWARD", "FORWARD", "FULL_TRANSITIVE"):
        assert check(level, json.dumps(theirs), [json.dumps(OURS)]) == []
        assert check(level, json.dumps(OURS), [json.dumps(theirs)]) == []


def test_another_difference_under_another_name_is_still_refused_and_named() -> None:
    theirs = {
        **OURS,
        "name": "RainfallObservation",
        "fields": [*OURS["fields"][:1], {"name": "rain_mm", "type": "string"}],
    }
    problems = check("BACKWARD", json.dumps(theirs), [json.dumps(OURS)])
    assert problems and all("expected:" not in p for p in problems)  # the name is not one of the problems
    assert any("string not compatible with writer type: double" in p for p in problems), problems
