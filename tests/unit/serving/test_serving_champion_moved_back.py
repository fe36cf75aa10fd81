"""Serving when the registry moves the champion back (it followed a rollback): a replica already serving that
version stays on it without a switch, and a rollout of the rolled-back version still running on it stops (it must
not complete later), announced as ``origin: champion_moved`` so that the registry does not act on it again."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import rollout_support as rollout

from driftloop.contracts.events import new_event

MODEL = rollout.MODEL


def test_champion_moved_back_stops_a_running_rollout_without_a_switch(tmp_path: Path, models: dict) -> None:
    pipeline = rollout.with_rollout(models["pipeline"], mode="canary", canary_steps=[0.5], step_min_requests=10_000)
    env = rollout.make_env(tmp_path, pipeline)
    first = rollout.promote(env, models, 1, 1)
    rollout.promote(env, models, 2, 2)
    assert env.rollouts.get(MODEL) is not None
    switches = len(rollout.of_type(env, "ServingSwitched"))

    # What the registry sends after another replica rolled v2 back: champion v1 again (same artifact).
    moved_back = new_event(replace(first.payload, previous_version=2, rollback=True), producer="registry")
    env.follower._load_newest(MODEL, [moved_back])

    assert env.rollouts.get(MODEL) is None and env.table.get(MODEL).version == 1
    assert len(rollout.of_type(env, "ServingSwitched")) == switches  # no reload, no flap
    (stopped,) = rollout.of_type(env, "RolloutRolledBack")
    assert (stopped.payload.version, stopped.payload.origin) == (2, "champion_moved")
    assert all(rollout.predict(env, seed)["version"] == 1 for seed in range(6))
    # The same move redelivered: nothing more happens.
    env.follower._load_newest(MODEL, [moved_back])
    assert len(rollout.of_type(env, "RolloutRolledBack")) == 1 and env.rollouts.get(MODEL) is None


def test_rollback_events_say_why_the_replica_stopped(tmp_path: Path, models: dict) -> None:
    pipeline = rollout.with_rollout(models["pipeline"], mode="canary", canary_steps=[0.5], step_min_requests=2)
    env = rollout.make_env(tmp_path, pipeline)
    rollout.promote(env, models, 1, 1)
    rollout.promote(env, models, "bad", 2)
    rollout.promote(env, models, "bad", 3)  # supersedes the rollout of v2
    for seed in range(10):  # the bad v3 fails every canary request: a verdict
        rollout.predict(env, seed)
    origins = [(e.payload.version, e.payload.origin) for e in rollout.of_type(env, "RolloutRolledBack")]
    assert origins == [(2, "superseded"), (3, "verdict")]
