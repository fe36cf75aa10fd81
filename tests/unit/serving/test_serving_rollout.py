"""Canary and shadow rollouts without Kafka: real LightGBM artifacts in a local object store, the serving API
through TestClient, published events recorded. A "bad" challenger is an artifact whose model raises on every
prediction (it names one feature more than it was trained on)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from model_factory import put_artifact
from rollout_support import MODEL, make_env, of_type, one_row, predict, promote, with_rollout

from driftloop.contracts.events import new_event
from driftloop.contracts.featuredefs import features_from_instances
from driftloop.contracts.payloads import ModelPromoted
from driftloop.contracts.pipeline import RolloutSpec


def test_canary_sends_exactly_the_configured_share_to_the_challenger(tmp_path: Path, models: dict) -> None:
    pipeline = with_rollout(models["pipeline"], mode="canary", canary_steps=[0.25], step_min_requests=10_000)
    env = make_env(tmp_path, pipeline)
    promote(env, models, 1, 1)
    promoted = promote(env, models, 2, 2)

    assert env.table.get(MODEL).version == 1  # the champion stays until the rollout completes
    (started,) = of_type(env, "RolloutStepped")
    step = started.payload
    assert (step.action, step.version, step.champion_version, step.share) == ("started", 2, 1, 0.25)
    assert started.envelope.caused_by == promoted.id

    versions = [predict(env, seed)["version"] for seed in range(40)]
    assert versions.count(2) == 10 and versions.count(1) == 30
    logged = of_type(env, "PredictionLogged")
    assert sorted({e.payload.version for e in logged}) == [1, 2]  # each answer is logged with the version that gave it


def test_canary_steps_up_then_completes_and_the_challenger_serves_everything(tmp_path: Path, models: dict) -> None:
    pipeline = with_rollout(
        models["pipeline"], mode="canary", canary_steps=[0.25, 0.5], step_min_requests=3, max_latency_ratio=1000
    )
    env = make_env(tmp_path, pipeline)
    promote(env, models, 1, 1)
    promote(env, models, 2, 2)
    for seed in range(20):  # 3 of 12 to the challenger at 25%, then 3 of 6 at 50%
        predict(env, seed)

    steps = [(e.payload.action, e.payload.share) for e in of_type(env, "RolloutStepped")]
    assert steps == [("started", 0.25), ("stepped", 0.5), ("completed", 1.0)]
    assert env.table.get(MODEL).version == 2 and env.rollouts.get(MODEL) is None
    switched = of_type(env, "ServingSwitched")[-1]
    assert (switched.payload.version, switched.payload.previous_version) == (2, 1)
    assert not of_type(env, "RolloutRolledBack")
    assert predict(env, 1000)["version"] == 2


def test_a_failing_challenger_is_rolled_back_by_itself_and_no_request_fails(tmp_path: Path, models: dict) -> None:
    pipeline = with_rollout(models["pipeline"], mode="canary", canary_steps=[0.5], step_min_requests=6)
    env = make_env(tmp_path, pipeline)
    promote(env, models, 1, 1)
    promote(env, models, "bad", 2)

    answers = [predict(env, seed) for seed in range(16)]  # predict() asserts every answer is a 200

    assert {a["version"] for a in answers} == {1}  # the champion answered what the challenger failed
    (rolled_back,) = of_type(env, "RolloutRolledBack")
    assert rolled_back.payload.version == 2 and rolled_back.payload.champion_version == 1
    assert "error rate" in rolled_back.payload.reason
    stats = json.loads(rolled_back.payload.stats_json)
    assert stats["challenger"]["errors"] == stats["challenger"]["requests"] == 6
    assert env.rollouts.get(MODEL) is None and env.table.get(MODEL).version == 1
    assert not [e for e in of_type(env, "RolloutStepped") if e.payload.action == "completed"]


def test_a_rollback_on_one_replica_stops_the_same_rollout_on_the_others_and_is_not_redone(
    tmp_path: Path, models: dict
) -> None:
    pipeline = with_rollout(models["pipeline"], mode="canary", canary_steps=[0.5], step_min_requests=4)
    a, b = make_env(tmp_path, pipeline, "replica-a"), make_env(tmp_path, pipeline, "replica-b")
    for env in (a, b):
        promote(env, models, 1, 1)
    uri, sha = put_artifact(a.store, MODEL, "run-bad", models["bad"])
    payload = ModelPromoted(
        model=MODEL,
        version=2,
        alias="champion",
        previous_version=1,
        artifact_uri=uri,
        artifact_sha256=sha,
        dataset_version_id="tx@v1",
        feature_set_uri="file:///unused",
        reason="test",
        gate_json="{}",
    )
    promoted = new_event(payload, producer="registry")
    assert a.follower.load(promoted) and b.follower.load(promoted)
    for seed in range(10):
        predict(a, seed)
    (on_a,) = of_type(a, "RolloutRolledBack")

    b.rollouts.follow_rollback(on_a)
    assert b.rollouts.get(MODEL) is None and b.table.get(MODEL).version == 1
    (on_b,) = of_type(b, "RolloutRolledBack")
    assert on_b.payload.reason.startswith("rolled back on replica replica-a") and on_b.envelope.caused_by == promoted.id
    a.rollouts.follow_rollback(on_b)  # news from b about the same promotion: nothing left to do on a
    assert len(of_type(a, "RolloutRolledBack")) == 1

    a.follower.on_model_promoted(promoted)  # a redelivery of the rolled-back promotion
    stop = threading.Event()
    loader = threading.Thread(target=a.follower.run, args=(stop,))
    loader.start()
    deadline = time.monotonic() + 20
    while not a.follower.idle() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    loader.join()
    assert a.rollouts.get(MODEL) is None and a.table.get(MODEL).version == 1


def test_a_challenger_whose_predictions_shift_past_the_threshold_is_rolled_back(tmp_path: Path, models: dict) -> None:
    pipeline = with_rollout(
        models["pipeline"],
        mode="canary",
        canary_steps=[0.5],
        step_min_requests=8,
        max_latency_ratio=1000,
        max_mean_prediction_shift=1e-6,
    )
    env = make_env(tmp_path, pipeline)
    promote(env, models, 1, 1)
    promote(env, models, 2, 2)
    for seed in range(20):
        predict(env, seed)
    (rolled_back,) = of_type(env, "RolloutRolledBack")
    assert "mean prediction" in rolled_back.payload.reason
    assert env.table.get(MODEL).version == 1


def test_shadow_never_changes_an_answer(tmp_path: Path, models: dict) -> None:
    pipeline = with_rollout(models["pipeline"], mode="shadow", step_min_requests=10_000)
    env = make_env(tmp_path, pipeline)
    promote(env, models, 1, 1)
    promote(env, models, 2, 2)
    rows = [one_row(seed)[0] for seed in range(12)]
    champion_alone = models[1].predict(features_from_instances(rows, pipeline))
    challenger_alone = models[2].predict(features_from_instances(rows, pipeline))
    assert any(abs(a - b) > 1e-6 for a, b in zip(champion_alone, challenger_alone, strict=True))

    answers = [predict(env, seed) for seed in range(12)]

    assert [a["version"] for a in answers] == [1] * 12
    assert [a["predictions"][0] for a in answers] == pytest.approx(list(champion_alone), abs=1e-12)
    rollout = env.rollouts.get(MODEL)
    deadline = time.monotonic() + 30
    while rollout.challenger_stats.requests < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rollout.challenger_stats.requests == 12 and rollout.challenger_stats.errors == 0  # it did score copies
    assert {e.payload.version for e in of_type(env, "PredictionLogged")} == {1}  # only answers are logged


def test_shadow_completes_after_enough_good_copies(tmp_path: Path, models: dict) -> None:
    pipeline = with_rollout(models["pipeline"], mode="shadow", step_min_requests=5, max_latency_ratio=1000)
    env = make_env(tmp_path, pipeline)
    promote(env, models, 1, 1)
    promote(env, models, 2, 2)
    deadline = time.monotonic() + 30
    seed = 0
    while env.table.get(MODEL).version == 1 and time.monotonic() < deadline:
        assert predict(env, seed)["version"] == 1 or env.table.get(MODEL).version == 2
        seed += 1
    assert env.table.get(MODEL).version == 2
    assert [e.payload.action for e in of_type(env, "RolloutStepped")] == ["started", "completed"]


def test_history_replayed_at_start_switches_at_once_and_a_rollback_promotion_cancels_the_rollout(
    tmp_path: Path, models: dict
) -> None:
    pipeline = with_rollout(models["pipeline"], mode="canary", canary_steps=[0.5], step_min_requests=10_000)
    env = make_env(tmp_path, pipeline)
    promote(env, models, 1, 1)
    old = promote(env, models, 2, 2)  # a rollout: the replica started before this promotion
    assert env.rollouts.get(MODEL) is not None

    time.sleep(0.01)  # event times have millisecond resolution
    later = make_env(tmp_path, pipeline)  # a replica started after both promotions replays them
    promote(later, models, 1, 1)
    later.follower.load(old)
    assert later.table.get(MODEL).version == 2 and later.rollouts.get(MODEL) is None

    uri, sha = put_artifact(env.store, MODEL, "run-1", models[1])
    back = replace(old.payload, version=1, artifact_uri=uri, artifact_sha256=sha, rollback=True)
    assert env.follower.load(new_event(back, producer="registry"))
    assert env.rollouts.get(MODEL) is None and env.table.get(MODEL).version == 1
    assert of_type(env, "RolloutRolledBack")[-1].payload.reason.startswith("the champion moved to v1")


def test_rollout_config_is_checked() -> None:
    with pytest.raises(ValueError, match="canary_steps must increase"):
        RolloutSpec(mode="canary", canary_steps=[0.5, 0.2])
    with pytest.raises(ValueError):
        RolloutSpec(mode="canary", canary_steps=[1.5])
