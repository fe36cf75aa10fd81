"""The registry follows serving's rollbacks (``RolloutRolledBack``): the champion alias moves back to the version
serving kept, once per rolled-back promotion, and never over a move made since (then ``AliasMoveRefused``). On a
real SQLite database with the registry's handlers (published events are recorded)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from model_factory import put_artifact, training_completed
from registry_support import ADMIN, MODEL

from driftloop.contracts.events import Envelope, Event, new_event
from driftloop.contracts.payloads import RolloutRolledBack


def rolled_back(promotion_id: str, *, replica: str = "replica-a", origin: str = "verdict") -> Event:
    """What serving emits when its canary of v2 is worse than v1 (caused by v2's promotion)."""
    promotion = Envelope(promotion_id, "ModelPromoted", datetime.now(tz=UTC), None, promotion_id, "registry")
    payload = RolloutRolledBack(
        model=MODEL,
        version=2,
        champion_version=1,
        mode="canary",
        reason="challenger mean prediction differs",
        replica=replica,
        stats_json=json.dumps({}),
        origin=origin,
    )
    return new_event(payload, producer="serving", cause=promotion)


def champion_promotion_id(env: dict) -> str:
    alias = env["registry"].alias(MODEL, "champion")
    assert alias.version == 2
    return alias.event_id


def test_a_verdict_moves_champion_back_once_with_the_rollback_as_cause(env: dict) -> None:
    handlers, bus, registry = env["handlers"], env["bus"], env["registry"]
    rollback = rolled_back(champion_promotion_id(env))
    handlers.on_rollout_rolled_back(rollback)

    assert registry.aliases(MODEL) == {"champion": 1}
    [moved] = bus.published
    assert moved.type == "ModelPromoted" and moved.envelope.caused_by == rollback.id
    assert moved.envelope.cascade_id == rollback.envelope.cascade_id
    assert (moved.payload.version, moved.payload.previous_version, moved.payload.rollback, moved.payload.moved_by) == (
        1,
        2,
        True,
        "serving",
    )
    assert "replica-a" in moved.payload.reason
    alias = env["client"].get(f"/v1/models/{MODEL}/aliases/champion").json()
    assert (alias["version"], alias["moved_by"], alias["event_id"]) == (1, "serving", moved.id)

    # A redelivery re-sends the same event id (its first publish may have failed) and moves nothing.
    handlers.on_rollout_rolled_back(rollback)
    assert [e.id for e in bus.published] == [moved.id, moved.id]
    # Another replica's verdict on the same promotion: already done, nothing sent.
    handlers.on_rollout_rolled_back(rolled_back(rollback.envelope.caused_by or "", replica="replica-b"))
    assert len(bus.published) == 2 and registry.aliases(MODEL) == {"champion": 1}


def test_consequences_of_other_moves_are_not_acted_on(env: dict) -> None:
    promotion_id = champion_promotion_id(env)
    for origin in ("followed", "superseded", "champion_moved"):
        env["handlers"].on_rollout_rolled_back(rolled_back(promotion_id, origin=origin))
    assert env["registry"].aliases(MODEL) == {"champion": 2} and env["bus"].published == []


def test_a_champion_moved_since_the_promotion_stays_and_the_refusal_is_an_event(env: dict) -> None:
    client, bus, registry = env["client"], env["bus"], env["registry"]
    promotion_id = champion_promotion_id(env)
    # Someone points champion at v2 again by hand (a move of its own) before serving's verdict arrives.
    moved = client.put(f"/v1/models/{MODEL}/aliases/champion", json={"version": 1, "reason": "by hand"}, headers=ADMIN)
    assert moved.status_code == 200
    again = client.put(f"/v1/models/{MODEL}/aliases/champion", json={"version": 2, "reason": "keep v2"}, headers=ADMIN)
    assert again.status_code == 200
    bus.published.clear()

    rollback = rolled_back(promotion_id)
    env["handlers"].on_rollout_rolled_back(rollback)
    assert registry.aliases(MODEL) == {"champion": 2}
    [refused] = bus.published
    assert refused.type == "AliasMoveRefused" and refused.envelope.caused_by == rollback.id
    assert (refused.payload.requested_version, refused.payload.current_version, refused.payload.expected_version) == (
        1,
        2,
        2,
    )
    assert "alice" in refused.payload.reason and "keep v2" in refused.payload.reason


def test_a_rolled_back_version_is_shown_so_and_skipped_by_the_default_rollback(env: dict, models: dict) -> None:
    client, handlers, registry = env["client"], env["handlers"], env["registry"]
    handlers.on_rollout_rolled_back(rolled_back(champion_promotion_id(env)))
    assert registry.aliases(MODEL) == {"champion": 1}
    statuses = {v["version"]: v["status"] for v in client.get(f"/v1/models/{MODEL}/versions").json()["versions"]}
    assert statuses == {1: "promoted", 2: "rolled_back"}

    # v3 beats the champion v1 and is promoted; rolling it back by default skips v2 and lands on v1.
    uri, sha = put_artifact(env["store"], MODEL, "run-3", models["good"])
    completed = training_completed(MODEL, "run-3", uri, sha, env["fs_uri"], "tx-alias@v1")
    handlers.on_training_completed(new_event(completed, producer="training"))
    assert registry.aliases(MODEL) == {"champion": 3}
    back = client.post(f"/v1/models/{MODEL}/rollback", json={"reason": "v3 misbehaves"}, headers=ADMIN)
    assert back.status_code == 200 and (back.json()["version"], back.json()["previous_version"]) == (1, 3)

    # A person may still name the rolled-back version: it becomes the champion and promoted again.
    forward = client.post(f"/v1/models/{MODEL}/rollback", json={"to": 2}, headers=ADMIN)
    assert forward.status_code == 200 and registry.aliases(MODEL) == {"champion": 2}
    assert registry.get_version(MODEL, 2).status == "promoted"
