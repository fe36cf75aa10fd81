"""Event contracts: every schema parses, every topic has one, and changes stay backward compatible."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import fastavro
import pytest
from avro.schema import parse

from driftloop.contracts.events import Event, new_event, new_events
from driftloop.contracts.payloads import ExternalTrigger, TrainingRequested
from driftloop.contracts.schemalock import check_lock, incompatibilities, update_lock
from driftloop.contracts.schemas import event_schema, event_types
from driftloop.contracts.topics import EVENT_TOPICS, TOPIC_BY_EVENT_TYPE

ENVELOPE_FIELDS = {"event_id", "event_type", "occurred_at", "caused_by", "cascade_id", "producer"}


@pytest.mark.parametrize("event_type", event_types())
def test_every_schema_parses_with_both_avro_libraries_and_has_the_envelope(event_type: str) -> None:
    schema = event_schema(event_type)
    fastavro.parse_schema(schema)
    parse(json.dumps(schema))
    envelope = schema["fields"][0]
    assert envelope["name"] == "envelope"
    assert {f["name"] for f in envelope["type"]["fields"]} == ENVELOPE_FIELDS


def test_topics_and_schemas_match_one_to_one() -> None:
    assert sorted(t.event_type for t in EVENT_TOPICS) == event_types()
    assert len({t.name for t in EVENT_TOPICS}) == len(EVENT_TOPICS)
    for topic in EVENT_TOPICS:
        field_names = {f["name"] for f in event_schema(topic.event_type)["fields"]}
        assert topic.key in field_names, f"{topic.name} is keyed by {topic.key}, which its event lacks"


def test_the_events_the_issue_names_exist() -> None:
    required = {
        "RecordRejected", "DatasetVersionCreated", "FeaturesMaterialized", "TrainingRequested", "RunStateChanged",
        "TrainingCompleted", "ModelRegistered", "ModelPromoted", "ModelRejected", "PredictionLogged",
        "FeedbackReceived", "DriftDetected", "PerformanceDegraded",
    }  # fmt: skip
    assert required <= set(TOPIC_BY_EVENT_TYPE)


def test_current_schemas_are_backward_compatible_with_every_released_version() -> None:
    assert check_lock() == []


def test_the_lock_check_catches_an_incompatible_change(tmp_path: Path) -> None:
    lock = tmp_path / "lock.json"
    update_lock(lock)
    data = json.loads(lock.read_text())
    # Pretend a released version had a field the current schema dropped without a default: old data still
    # reads (fields are skipped) — but a field ADDED without a default cannot be read from old data.
    current = event_schema("DriftDetected")
    older = copy.deepcopy(current)
    older["fields"] = [f for f in older["fields"] if f["name"] != "correction"]
    data["DriftDetected"] = [older]
    lock.write_text(json.dumps(data))
    problems = check_lock(lock)
    assert len(problems) == 1 and "DriftDetected" in problems[0] and "correction" in problems[0]


def test_adding_a_field_with_a_default_is_compatible() -> None:
    current = event_schema("ModelPromoted")
    newer = copy.deepcopy(current)
    newer["fields"].append({"name": "note", "type": ["null", "string"], "default": None})
    assert incompatibilities(newer, current) == []


def test_new_event_joins_the_cause_cascade() -> None:
    root = new_event(ExternalTrigger(model="m", reason="upstream change"), producer="external")
    asked = TrainingRequested(request_id="r-1", model="m", trigger="external", reason="upstream change")
    child = new_event(asked, producer="triggers", cause=root)
    assert root.envelope.cascade_id == root.id and root.envelope.caused_by is None
    assert child.envelope.caused_by == root.id and child.envelope.cascade_id == root.id
    assert child.type == "TrainingRequested" and child.payload is asked and child.key == "m"
    assert Event.from_avro(child.to_avro()) == child
    unknown = {**child.to_avro(), "envelope": {**child.envelope.to_avro(), "event_type": "NoSuchEvent"}}
    with pytest.raises(ValueError, match="unknown event type"):
        Event.from_avro(unknown)


def test_an_event_made_once_per_something_has_the_same_id_each_time_it_is_made() -> None:
    root = new_event(ExternalTrigger(model="m", reason="r"), producer="external")
    asked = TrainingRequested(request_id="r-1", model="m", trigger="external", reason="r")
    first, again = (new_event(asked, producer="triggers", cause=root, once_per="r-1") for _ in range(2))
    assert first.id == again.id and uuid.UUID(first.id).version == 5
    assert first.envelope.caused_by == root.id and first.envelope.cascade_id == root.id
    other_producer = new_event(asked, producer="someone", cause=root, once_per="r-1")
    other_key = new_event(asked, producer="triggers", cause=root, once_per="r-2")
    assert len({first.id, other_producer.id, other_key.id}) == 3
    # Without it, a random id each time.
    assert new_event(asked, producer="triggers", cause=root).id != new_event(asked, producer="triggers", cause=root).id


def test_new_events_are_distinct_events_with_random_uuid_ids() -> None:
    root = new_event(ExternalTrigger(model="m", reason="r"), producer="external")
    payloads = [ExternalTrigger(model="m", reason=f"r{i}") for i in range(500)]
    alone = new_events(payloads, producer="bench")
    caused = new_events(payloads[:3], producer="bench", cause=root)
    ids = [e.id for e in alone]
    assert len(set(ids)) == len(ids) == 500 and [e.payload for e in alone] == payloads
    for event_id in ids:
        parsed = uuid.UUID(event_id)
        assert str(parsed) == event_id and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert all(e.envelope.cascade_id == e.id and e.envelope.caused_by is None for e in alone)
    assert all(e.envelope.caused_by == root.id and e.envelope.cascade_id == root.id for e in caused)
    assert {e.envelope.occurred_at for e in alone} == {alone[0].envelope.occurred_at}  # made at one moment
    assert Event.from_avro(alone[7].to_avro()) == alone[7]
