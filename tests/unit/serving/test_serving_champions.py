"""Serving's champions come from the registry: a promotion the registry did not make is refused (and reported), an
old one replayed from the bus is skipped, and the reconciler loads what the registry names. The registry is a fake
answering its real routes (``/v1/models/{m}/versions/{v}``, ``/v1/models/{m}/aliases/champion``) through
``ServiceClient`` (httpx mock transport); the loader and its artifacts are real."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from model_factory import feature_frame, make_pipeline, put_artifact, train_artifact
from prometheus_client import REGISTRY

from driftloop.clients.http import ServiceClient
from driftloop.clients.objectstore import LocalObjectStore
from driftloop.contracts.events import Envelope, Event, new_event
from driftloop.contracts.payloads import ModelPromoted
from driftloop.services.serving.champions import ChampionReconciler, PromotionCheck, RegistryChampions
from driftloop.services.serving.loader import PromotionFollower
from driftloop.services.serving.rollout import RolloutController
from driftloop.services.serving.served import ModelTable

MODEL = "fraud-champions-unit"


class FakeRegistry:
    """Versions and the champion alias, answered like the registry's routes; ``down`` makes it unreachable."""

    def __init__(self) -> None:
        self.versions: dict[int, dict[str, Any]] = {}
        self.champion: dict[str, Any] | None = None
        self.down = False
        self.calls: list[str] = []

    def add(self, version: int, uri: str, sha: str) -> None:
        self.versions[version] = {
            "model": MODEL,
            "version": version,
            "artifact_uri": uri,
            "artifact_sha256": sha,
            "dataset_version_id": "tx@v1",
            "feature_set_uri": "file:///fs",
            "gate": {},
        }

    def promote(self, version: int, event_id: str, at: datetime) -> None:
        self.champion = {
            "model": MODEL,
            "alias": "champion",
            "version": version,
            "moved_by": "registry",
            "reason": "gate",
            "event_id": event_id,
            "cascade_id": f"cascade-of-{event_id}",
            "caused_by": "training-completed",
            "updated_at": at.isoformat(),
            "model_version": self.versions[version],
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("refused", request=request)
        self.calls.append(request.url.path)
        assert request.headers.get("authorization") == "Bearer reader-token-123"
        parts = request.url.path.strip("/").split("/")
        if parts[:3] == ["v1", "models", MODEL] and parts[3] == "versions" and int(parts[4]) in self.versions:
            return httpx.Response(200, json=self.versions[int(parts[4])])
        if parts[:3] == ["v1", "models", MODEL] and parts[3:] == ["aliases", "champion"] and self.champion:
            return httpx.Response(200, json=self.champion)
        return httpx.Response(404, json={"detail": "not found", "code": "not_found"})


@pytest.fixture(scope="module")
def artifacts() -> dict[str, Any]:
    pipeline = make_pipeline(model=MODEL, stream="tx-champions-unit")
    features = feature_frame(pipeline, rows=800)
    return {
        "pipeline": pipeline,
        1: train_artifact(pipeline, features, rounds=5),
        2: train_artifact(pipeline, features, rounds=9),
    }


@pytest.fixture
def env(tmp_path: Path, artifacts: dict[str, Any]) -> SimpleNamespace:
    store = LocalObjectStore(tmp_path / "objects")
    fake = FakeRegistry()
    uris = {}
    for version in (1, 2):
        uri, sha = put_artifact(store, MODEL, f"run-{version}", artifacts[version])
        fake.add(version, uri, sha)
        uris[version] = (uri, sha)
    client = ServiceClient(
        "registry",
        base_url="http://registry",
        token="reader-token-123",
        transport=httpx.MockTransport(fake.handle),
        retries=0,
    )
    registry = RegistryChampions(client)
    table = ModelTable()
    published: list[Event] = []
    rollouts = RolloutController(table, published.append, "replica-a")
    stale: list[str] = []
    check = PromotionCheck(registry, table, on_stale=stale.append)
    follower = PromotionFollower(
        table, store, {MODEL: artifacts["pipeline"]}, published.append, "replica-a", rollouts=rollouts, check=check
    )
    submitted: list[Event] = []
    reconciler = ChampionReconciler(registry, check, table, rollouts, submitted.append, [MODEL], interval=60)
    return SimpleNamespace(
        fake=fake, uris=uris, table=table, check=check, follower=follower, reconciler=reconciler,
        submitted=submitted, stale=stale, published=published,
    )  # fmt: skip


def promoted(env: SimpleNamespace, version: int, *, sha: str | None = None, at: datetime | None = None) -> Event:
    uri, real_sha = env.uris[version]
    payload = ModelPromoted(
        model=MODEL,
        version=version,
        alias="champion",
        previous_version=None,
        artifact_uri=uri,
        artifact_sha256=sha or real_sha,
        dataset_version_id="tx@v1",
        feature_set_uri="file:///fs",
        reason="test",
        gate_json="{}",
    )
    event = new_event(payload, producer="attacker")
    if at is not None:
        event = Event(envelope=Envelope(**{**_fields(event.envelope), "occurred_at": at}), payload=payload)
    return event


def _fields(envelope: Envelope) -> dict[str, Any]:
    return {name: getattr(envelope, name) for name in Envelope.__slots__}


def refused_count() -> float:
    return REGISTRY.get_sample_value("driftloop_serving_refused_promotions_total", {"model": MODEL}) or 0.0


def test_a_promotion_the_registry_made_is_served(env: SimpleNamespace) -> None:
    event = promoted(env, 1)
    env.fake.promote(1, event.id, datetime.now(tz=UTC) + timedelta(seconds=1))
    assert env.follower.load(event)
    assert env.table.get(MODEL).version == 1
    assert env.check.last_refused is None


def test_a_forged_promotion_of_an_unknown_version_is_refused_and_reported(env: SimpleNamespace) -> None:
    before = refused_count()
    forged = promoted(env, 2)
    del env.fake.versions[2]
    assert not env.follower.load(forged)
    assert env.table.get(MODEL) is None
    assert refused_count() == before + 1
    refused = env.check.describe_last_refused()
    assert refused["event_id"] == forged.id and refused["producer"] == "attacker"
    assert "no version 2" in refused["reason"]
    assert "no version 2" in env.table.problem(MODEL).reason
    # Refused before any artifact was fetched: the object store was never asked.
    assert env.published == []


def test_a_forged_promotion_of_another_artifact_is_refused(env: SimpleNamespace) -> None:
    event = promoted(env, 1)
    env.fake.promote(1, event.id, datetime.now(tz=UTC) + timedelta(seconds=1))
    _, sha2 = env.uris[2]
    forged = promoted(env, 1, sha=sha2)
    assert not env.follower.load(forged)
    assert "is not the registry's v1" in env.check.last_refused.reason


def test_a_promotion_claiming_a_move_the_registry_never_made_is_refused(env: SimpleNamespace) -> None:
    env.fake.promote(1, "promotion-of-v1", datetime.now(tz=UTC) - timedelta(minutes=1))
    forged = promoted(env, 2)  # a real version with its real artifact, but the registry's champion is v1
    assert not env.follower.load(forged)
    assert "champion of fraud-champions-unit is v1, not v2" in env.check.last_refused.reason


def test_an_old_promotion_replayed_from_the_bus_is_skipped_quietly(env: SimpleNamespace) -> None:
    old = promoted(env, 1, at=datetime.now(tz=UTC) - timedelta(hours=1))
    env.fake.promote(2, "promotion-of-v2", datetime.now(tz=UTC) - timedelta(minutes=1))
    before = refused_count()
    assert not env.follower.load(old)
    assert env.check.last_refused is None and refused_count() == before
    assert env.stale == [MODEL]  # the reconciler is asked to serve the real champion


def test_nothing_is_loaded_while_the_registry_cannot_confirm(env: SimpleNamespace) -> None:
    event = promoted(env, 1)
    env.fake.promote(1, event.id, datetime.now(tz=UTC))
    env.fake.down = True
    assert not env.follower.load(event)
    assert env.table.get(MODEL) is None and env.check.last_refused is None
    assert env.stale == [MODEL]


def test_the_reconciler_loads_the_registrys_champion_and_readiness_waits_for_it(env: SimpleNamespace) -> None:
    reconciler = env.reconciler
    assert "has not asked the registry" in reconciler.not_ready_because()
    env.fake.down = True
    with pytest.raises(Exception, match="does not answer"):
        reconciler.reconcile_once()
    env.fake.down = False

    assert reconciler.reconcile_once() == []  # no champion yet: nothing to load, and ready
    assert reconciler.not_ready_because() is None

    env.fake.promote(2, "promotion-of-v2", datetime.now(tz=UTC) - timedelta(minutes=5))
    assert reconciler.reconcile_once() == [MODEL]
    assert reconciler.not_ready_because() == f"{MODEL} v2 not loaded"
    (event,) = env.submitted
    assert event.id == "promotion-of-v2" and event.payload.version == 2
    # Same id, cause and cascade as the registry's promotion: the switch continues that cascade's timeline.
    assert (event.envelope.cascade_id, event.envelope.caused_by) == ("cascade-of-promotion-of-v2", "training-completed")
    # The reconciler's own event is vouched for: loaded without asking the registry again.
    calls = len(env.fake.calls)
    assert env.follower.load(event)
    assert len(env.fake.calls) == calls
    assert env.table.get(MODEL).version == 2 and reconciler.not_ready_because() is None
    assert reconciler.reconcile_once() == []  # already served: nothing submitted again
    assert reconciler.describe()["champions"] == {MODEL: 2}
