"""A canary rolled back by serving moves the registry's champion alias back (real broker, schema registry, SQLite,
object store; registry and serving in-process): the registry's HTTP API names the old version champion, a serving
replica started afterwards serves the old version without a rollout, the replica that rolled back does not flap,
and the timeline shows the rollback and the alias move with their cause chain."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pipeline_support import wait_for
from serving_support import Stack, rows

from driftloop.runtime.service import base_app
from driftloop.runtime.timeline import lineage
from driftloop.services.dashboard import api as dashboard_api
from driftloop.services.serving.service import build as build_serving

pytestmark = pytest.mark.integration


def test_a_rolled_back_canary_moves_champion_back_and_a_new_replica_serves_the_old_version(
    canary_stack: Stack,
) -> None:
    stack = canary_stack
    stack.complete_training("run-1", rounds=1)
    assert stack.decided(1)["status"] == "promoted"
    wait_for(lambda: stack.served_version() == 1, "serving to load v1")
    stack.complete_training("run-2", rounds=30)  # promoted by the gate; its online predictions differ: rolled back
    assert stack.decided(2)["status"] == "promoted"
    wait_for(lambda: stack.serving.client.get(f"/v1/models/{stack.model}").json()["rollout"], "a rollout")
    for i in range(20):
        batch = [{**row, "customer_id": f"c{i}-{j}"} for j, row in enumerate(rows(2))]
        assert stack.predict(batch).status_code == 200
    (rolled_back,) = wait_for(lambda: stack.events("RolloutRolledBack"), "RolloutRolledBack in the event log")
    assert rolled_back.payload["origin"] == "verdict"

    # The registry follows: champion is v1 again, moved by serving, caused by the rollback.
    def champion() -> dict | None:
        alias = stack.registry.client.get(f"/v1/models/{stack.model}/aliases/champion").json()
        return alias if alias["version"] == 1 else None

    alias = wait_for(champion, "the registry's champion alias back on v1")
    assert alias["moved_by"] == "serving" and "rolled back v2" in alias["reason"]
    moved_back = wait_for(
        lambda: [e for e in stack.events("ModelPromoted") if e.payload["rollback"]], "the rollback ModelPromoted"
    )
    assert [e.event_id for e in moved_back] == [alias["event_id"]]  # one move
    assert moved_back[0].caused_by == rolled_back.event_id and moved_back[0].payload["previous_version"] == 2
    history = stack.registry.client.get(f"/v1/models/{stack.model}/aliases/champion/history").json()["moves"]
    assert [(m["version"], m["previous_version"], m["rollback"], m["moved_by"]) for m in history] == [
        (1, 2, True, "serving"),
        (2, 1, False, "registry"),
        (1, None, False, "registry"),
    ]
    # The rolled-back version says so (not a default rollback target any more).
    assert stack.registry.client.get(f"/v1/models/{stack.model}/versions/2").json()["status"] == "rolled_back"

    # A replica started now replays the promotions and serves v1, without a rollout of v2.
    fresh = stack.start("serving", build_serving)
    wait_for(lambda: stack.served_version(fresh) == 1, "a new replica to serve v1")
    wait_for(lambda: fresh.spec.app.state.follower.idle(), "the new replica's loader to settle")
    assert stack.served_version(fresh) == 1
    assert fresh.client.get(f"/v1/models/{stack.model}").json()["rollout"] is None
    answer = stack.predict(rows(2), serving=fresh)
    assert answer.status_code == 200 and answer.json()["version"] == 1
    # The replica that rolled back neither switches nor starts another rollout (no flapping).
    wait_for(lambda: stack.serving.spec.app.state.follower.idle(), "the first replica's loader to settle")
    assert stack.served_version() == 1
    assert stack.serving.client.get(f"/v1/models/{stack.model}").json()["rollout"] is None
    assert len(stack.events("RolloutStepped")) == 1  # the one "started" of v2
    assert len(stack.events("RolloutRolledBack")) == 1

    # The cause chain: training → promotion of v2 → rollback by serving → champion moved back.
    chain = [step.event_type for step in lineage(stack.registry.runtime.engine, moved_back[0].event_id)]
    assert chain[-4:] == ["TrainingCompleted", "ModelPromoted", "RolloutRolledBack", "ModelPromoted"]
    # GET /v1/timeline/{model} (the dashboard's route) shows the rollback and the alias move.
    runtime = stack.registry.runtime
    app = base_app(runtime, "dashboard")
    app.state.context = dashboard_api.Context(runtime.pipelines, runtime.engine, platform=None)  # type: ignore[arg-type]
    app.include_router(dashboard_api.router)
    timeline = TestClient(app).get(f"/v1/timeline/{stack.model}").json()
    (cascade,) = [c for c in timeline["cascades"] if any(s["event_id"] == alias["event_id"] for s in c["steps"])]
    summaries = [s["summary"] for s in cascade["steps"]]
    assert any("rolled back to v1 (was v2) by serving" in s for s in summaries)
    assert cascade["outcome"] == "rolled back v2, champion v1"
