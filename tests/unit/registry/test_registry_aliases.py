"""Registry API: alias moves, rollback, tags and description, signature, gate config, and their tokens; on a real
SQLite database and a local object store, the app built by ``base_app`` (published events are recorded)."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_factory import (
    put_artifact,
    training_completed,
)
from registry_support import ADMIN, MODEL, READER

from driftloop.client import Client
from driftloop.contracts.events import Event, new_event
from driftloop.errors import DriftloopError
from driftloop.services.registry.handlers import RegistryHandlers


def test_version_has_signature_gate_config_and_empty_annotations(env: dict, models: dict) -> None:
    version = env["client"].get(f"/v1/models/{MODEL}/versions/2").json()
    inputs = {f["name"]: f["type"] for f in version["signature"]["inputs"]}
    stream = models["pipeline"].stream
    assert stream.label not in inputs and inputs[stream.entity_key] == "string"
    assert set(inputs) == set(stream.field_names) - {stream.label}
    assert version["signature"]["features"] == version["lineage"]["feature_names"]
    assert version["signature"]["output"]["task"] == "classification"
    config = version["gate"]["config"]
    assert (config["metric"], config["direction"], config["min_improvement"], config["first_version_threshold"]) == (
        "roc_auc",
        "maximize",
        0.01,
        0.6,
    )
    assert version["tags"] == {} and version["description"] == ""


def test_put_alias_moves_it_atomically_with_an_event_naming_who_and_why(env: dict) -> None:
    client, bus = env["client"], env["bus"]
    response = client.put(
        f"/v1/models/{MODEL}/aliases/challenger", json={"version": 1, "reason": "shadow test"}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    assert response.json()["moved"] is True and response.json()["previous_version"] is None
    [event] = bus.published
    assert event.type == "ModelPromoted"
    assert (event.payload.alias, event.payload.version, event.payload.moved_by, event.payload.reason) == (
        "challenger",
        1,
        "alice",
        "shadow test",
    )
    alias = client.get(f"/v1/models/{MODEL}/aliases/challenger").json()
    assert (alias["version"], alias["moved_by"], alias["reason"], alias["event_id"]) == (
        1,
        "alice",
        "shadow test",
        event.id,
    )
    assert env["registry"].aliases(MODEL) == {"champion": 2, "challenger": 1}

    # The same move again re-sends the same event (a retried request), and moves nothing.
    again = client.put(f"/v1/models/{MODEL}/aliases/challenger", json={"version": 1, "reason": "retry"}, headers=ADMIN)
    assert again.json()["moved"] is False and bus.published[-1].id == event.id

    # Optimistic concurrency: expected_version must match where the alias points now.
    stale = client.put(
        f"/v1/models/{MODEL}/aliases/challenger",
        json={"version": 2, "reason": "x", "expected_version": 2},
        headers=ADMIN,
    )
    assert stale.status_code == 409 and "v1" in stale.json()["detail"]
    assert env["registry"].aliases(MODEL)["challenger"] == 1


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        (f"/v1/models/{MODEL}/aliases/challenger", {"version": 9, "reason": "x"}, 404, "no version 9"),
        ("/v1/models/nobody/aliases/champion", {"version": 1, "reason": "x"}, 404, "unknown model"),
        (f"/v1/models/{MODEL}/aliases/Bad Alias", {"version": 1, "reason": "x"}, 422, "alias"),
        (f"/v1/models/{MODEL}/aliases/challenger", {"version": 1}, 422, "reason"),
        (f"/v1/models/{MODEL}/aliases/challenger", {"version": 1, "reason": "x", "extra": 1}, 422, "extra"),
    ],
)
def test_bad_alias_moves_are_4xx_naming_the_problem(env: dict, path: str, body: dict, status: int, needle: str) -> None:
    response = env["client"].put(path, json=body, headers=ADMIN)
    assert response.status_code == status, response.text
    assert needle in response.text
    assert env["bus"].published == []


def test_rollback_moves_champion_to_the_previous_champion(env: dict) -> None:
    client, bus = env["client"], env["bus"]
    response = client.post(f"/v1/models/{MODEL}/rollback", json={"reason": "v2 misbehaves"}, headers=ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["version"], body["previous_version"], body["alias"]) == (1, 2, "champion")
    [event] = bus.published
    assert (
        event.payload.rollback is True and event.payload.moved_by == "alice" and event.payload.reason == "v2 misbehaves"
    )
    assert event.payload.artifact_sha256 == env["registry"].get_version(MODEL, 1).artifact_sha256
    assert env["registry"].champion(MODEL).version == 1
    assert client.get("/v1/models").json()["models"][0]["champion_version"] == 1

    # Nothing promoted before v1: a second rollback has nowhere to go.
    nothing = client.post(f"/v1/models/{MODEL}/rollback", headers=ADMIN)
    assert nothing.status_code == 409 and "first promoted version" in nothing.json()["detail"]
    # An explicit target goes forward too.
    forward = client.post(f"/v1/models/{MODEL}/rollback", json={"to": 2}, headers=ADMIN)
    assert forward.status_code == 200 and env["registry"].champion(MODEL).version == 2
    assert client.post(f"/v1/models/{MODEL}/rollback", json={"to": 2}, headers=ADMIN).status_code == 409
    assert client.post(f"/v1/models/{MODEL}/rollback", json={"to": 7}, headers=ADMIN).status_code == 404
    assert client.post("/v1/models/nobody/rollback", headers=ADMIN).status_code == 404


def test_patch_sets_and_deletes_tags_and_replaces_the_description(env: dict) -> None:
    client = env["client"]
    path = f"/v1/models/{MODEL}/versions/1"
    first = client.patch(
        path, json={"tags": {"team": "risk", "stage": "beta"}, "description": "baseline"}, headers=ADMIN
    )
    assert first.status_code == 200, first.text
    assert first.json()["tags"] == {"team": "risk", "stage": "beta"} and first.json()["description"] == "baseline"
    second = client.patch(path, json={"tags": {"stage": None, "owner": "alice"}}, headers=ADMIN)
    assert second.json()["tags"] == {"team": "risk", "owner": "alice"}
    assert second.json()["description"] == "baseline"
    assert client.get(path).json()["tags"] == {"team": "risk", "owner": "alice"}
    assert client.patch(path, json={}, headers=ADMIN).status_code == 422
    assert client.patch(path, json={"tags": {"k": 1}}, headers=ADMIN).status_code == 422
    assert client.patch(f"/v1/models/{MODEL}/versions/5", json={"description": "x"}, headers=ADMIN).status_code == 404


def test_mutating_registry_calls_need_an_admin_token(env: dict) -> None:
    client = env["client"]
    calls = [
        ("PUT", f"/v1/models/{MODEL}/aliases/champion", {"version": 1, "reason": "x"}),
        ("POST", f"/v1/models/{MODEL}/rollback", {}),
        ("PATCH", f"/v1/models/{MODEL}/versions/1", {"description": "x"}),
    ]
    for method, path, body in calls:
        anonymous = client.request(method, path, json=body)
        assert anonymous.status_code == 401, (method, path)
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert client.request(method, path, json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.request(method, path, json=body, headers=READER).status_code == 403
    assert env["registry"].champion(MODEL).version == 2 and env["bus"].published == []
    # Reads are open by default.
    assert client.get(f"/v1/models/{MODEL}/aliases").status_code == 200


def test_a_move_whose_event_cannot_be_published_is_503_and_a_retry_resends_the_same_event(env: dict) -> None:
    client, bus = env["client"], env["bus"]
    sent = bus.publish

    def broker_down(event: Event, *, wait: bool = True) -> None:
        raise DriftloopError("broker unreachable")

    bus.publish = broker_down
    failed = client.put(f"/v1/models/{MODEL}/aliases/champion", json={"version": 1, "reason": "x"}, headers=ADMIN)
    assert failed.status_code == 503 and "repeat the request" in failed.json()["detail"]
    stored_event_id = env["registry"].alias(MODEL, "champion").event_id
    bus.publish = sent
    retried = client.put(f"/v1/models/{MODEL}/aliases/champion", json={"version": 1, "reason": "x"}, headers=ADMIN)
    assert retried.status_code == 200 and retried.json()["moved"] is False
    assert [e.id for e in bus.published] == [stored_event_id]


def test_lineage_has_feature_views_and_the_runs_code_version(env: dict, models: dict) -> None:
    asked: list[str] = []

    def run_details(run_id: str) -> dict:
        asked.append(run_id)
        return {"run_id": run_id, "code_version": "git:abc123", "environment": {"python": "3.11.9"}}

    handlers = RegistryHandlers(
        env["bus"], env["registry"], env["store"], {MODEL: models["pipeline"]}, run_details=run_details
    )
    uri, sha = put_artifact(env["store"], MODEL, "run-3", models["weak"])
    completed = training_completed(MODEL, "run-3", uri, sha, env["fs_uri"], "tx-alias@v1")
    event = new_event(completed, producer="training")
    handlers.on_training_completed(event)
    handlers.on_training_completed(event)  # a redelivery asks nothing more and changes nothing
    lineage = env["client"].get(f"/v1/models/{MODEL}/versions/3").json()["lineage"]
    assert asked == ["run-3"]
    assert lineage["code_version"] == "git:abc123" and lineage["environment"] == {"python": "3.11.9"}
    views = lineage["feature_views"]
    assert views["version"] == "tx-alias@v1" and views["feature_set_uri"] == env["fs_uri"]
    assert [f["name"] for f in views["features"]] == [f.name for f in models["pipeline"].features]
    # Without the training service's answer the version is still registered, with no code version.
    v2 = env["client"].get(f"/v1/models/{MODEL}/versions/2").json()["lineage"]
    assert v2["code_version"] is None and v2["feature_views"]["version"] == "tx-alias@v1"


def test_cli_moves_aliases_annotates_and_rolls_back_over_http(env: dict, tmp_path: Path) -> None:
    import threading

    import uvicorn
    from typer.testing import CliRunner

    from driftloop.ops.cli import app as cli_app
    from driftloop.ops.procs import free_port, port_open, wait_until

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(env["client"].app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    cli_env = {
        "DRIFTLOOP_HOME": str(tmp_path / "cli-home"),
        "DRIFTLOOP_SERVICES__REGISTRY_PORT": str(port),
        "DRIFTLOOP_SECURITY__ADMIN_TOKENS": '{"alice": "admin-secret"}',
    }
    try:
        wait_until(lambda: port_open("127.0.0.1", port), 30, "the registry app")
        runner = CliRunner()
        moved = runner.invoke(cli_app, ["models", "alias", MODEL, "challenger", "1", "--reason", "try"], env=cli_env)
        assert moved.exit_code == 0, moved.output
        assert env["registry"].aliases(MODEL)["challenger"] == 1
        annotated = runner.invoke(
            cli_app, ["models", "annotate", MODEL, "1", "--tag", "team=risk", "--description", "base"], env=cli_env
        )
        assert annotated.exit_code == 0, annotated.output
        assert env["registry"].get_version(MODEL, 1).tags == {"team": "risk"}
        rolled = runner.invoke(cli_app, ["rollback", MODEL, "--reason", "cli"], env=cli_env)
        assert rolled.exit_code == 0 and "v2 -> v1" in rolled.output, rolled.output
        assert env["registry"].champion(MODEL).version == 1
        # Without the token the CLI reports the refusal.
        no_token = runner.invoke(
            cli_app, ["rollback", MODEL, "--to", "2"], env={**cli_env, "DRIFTLOOP_SECURITY__ADMIN_TOKENS": "{}"}
        )
        assert no_token.exit_code != 0 and "401" in str(no_token.exception)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_public_client_reads_the_registrys_answers_typed(env: dict) -> None:
    """``driftloop.client.Client`` against the real routes (the test app's transport): versions, aliases and a
    rollback read into their models with the values the JSON has."""
    transport = env["client"]._transport
    with Client(urls={"registry": "http://testserver"}, token="admin-secret", transport=transport) as dl:
        models = dl.models()
        versions = dl.versions(MODEL)
        champion = dl.alias(MODEL, "champion")
        moved = dl.rollback(MODEL, reason="typed")
        aliases = dl.aliases(MODEL)
        one = dl.version(MODEL, 1)
    assert [(m.model, m.versions, m.latest_version, m.champion_version) for m in models] == [(MODEL, 2, 2, 2)]
    assert [(v.version, v.aliases) for v in versions] == [(1, []), (2, ["champion"])]
    assert versions[1].artifact_sha256 == env["registry"].get_version(MODEL, 2).artifact_sha256
    assert versions[1].metrics and all(isinstance(v, float) for v in versions[1].metrics.values())
    assert champion.version == 2 and champion.model_version is not None and champion.model_version.version == 2
    assert (moved.alias, moved.previous_version, moved.version, moved.moved) == ("champion", 2, 1, True)
    assert [(a.alias, a.version, a.reason) for a in aliases] == [("champion", 1, "typed")]
    assert one.aliases == ["champion"] and one.created_at is not None
