"""The registry is serving's source of truth; the bus only brings news.

- ``RegistryChampions`` asks the registry (over authenticated HTTP, ``ServiceClient``) for a model's champion alias
  and for a version's artifact uri and sha256.
- ``PromotionCheck`` decides whether a ``ModelPromoted`` from the bus may be loaded: only if the registry has that
  version with that very artifact and its champion alias points at it. An event claiming a move the registry never
  made (unknown version, another artifact, or a champion the registry does not have) is refused and reported (the
  ``driftloop_serving_refused_promotions_total`` counter, ``last_refused`` on ``/healthz`` and an ERROR log line).
  An older promotion replayed from the bus (the champion moved on since) is history: skipped quietly.
- ``ChampionReconciler`` loads each model's champion as the registry says it, at start and every
  ``serving.reconcile_interval_seconds``: a replica started after the topics were truncated (or the embedded broker
  restarted empty), or one that missed events during a gap, serves the same champion within seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter

from driftloop.clients.http import ServiceClient
from driftloop.contracts.aliases import CHAMPION
from driftloop.contracts.events import Event, stored_event
from driftloop.contracts.payloads import ModelPromoted
from driftloop.errors import DriftloopError, NotFoundError

from .rollout import RolloutController
from .served import LoadProblem, ModelTable

log = logging.getLogger(__name__)

# The same champion is submitted again only after this long (its load failed or was refused in between).
RESUBMIT_AFTER = 30.0

REFUSED_PROMOTIONS = Counter(
    "driftloop_serving_refused_promotions_total",
    "ModelPromoted events refused because the registry did not make that move",
    ["model"],
)
RECONCILE_LOADS = Counter(
    "driftloop_serving_reconcile_loads_total", "Champions loaded because the registry said so (not the bus)", ["model"]
)


@dataclass(frozen=True)
class RegistryVersion:
    model: str
    version: int
    artifact_uri: str
    artifact_sha256: str
    dataset_version_id: str
    feature_set_uri: str
    gate: dict[str, Any]


@dataclass(frozen=True)
class RegistryChampion:
    """Where the registry's champion alias points, who moved it there, and the event that announced it."""

    version: RegistryVersion
    event_id: str | None
    moved_by: str
    reason: str
    updated_at: datetime | None
    cascade_id: str | None = None
    caused_by: str | None = None


def _version(model: str, body: dict[str, Any]) -> RegistryVersion:
    return RegistryVersion(
        model=model,
        version=int(body["version"]),
        artifact_uri=str(body["artifact_uri"]),
        artifact_sha256=str(body["artifact_sha256"]),
        dataset_version_id=str(body.get("dataset_version_id") or ""),
        feature_set_uri=str(body.get("feature_set_uri") or ""),
        gate=body.get("gate") or {},
    )


class RegistryChampions:
    """The registry's answers serving needs. Raises ``DriftloopError`` when the registry cannot answer."""

    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    def version(self, model: str, version: int) -> RegistryVersion | None:
        """The registered version, or None if the registry has no such version."""
        try:
            return _version(model, self.client.get(f"/v1/models/{model}/versions/{version}"))
        except NotFoundError:
            return None

    def champion(self, model: str) -> RegistryChampion | None:
        """The champion, or None if the model has none (yet)."""
        try:
            body = self.client.get(f"/v1/models/{model}/aliases/{CHAMPION}")
        except NotFoundError:
            return None
        updated = body.get("updated_at")
        at = datetime.fromisoformat(updated) if updated else None
        if at is not None and at.tzinfo is None:
            at = at.replace(tzinfo=UTC)  # SQLite gives back naive UTC
        return RegistryChampion(
            version=_version(model, body["model_version"]),
            event_id=body.get("event_id"),
            moved_by=str(body.get("moved_by") or "registry"),
            reason=str(body.get("reason") or ""),
            updated_at=at,
            cascade_id=body.get("cascade_id"),
            caused_by=body.get("caused_by"),
        )

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True)
class Refusal:
    model: str
    version: int
    event_id: str
    producer: str
    reason: str
    at: datetime

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "event_id": self.event_id,
            "producer": self.producer,
            "reason": self.reason,
            "at": self.at.isoformat(),
        }


class PromotionCheck:
    """Whether a ``ModelPromoted`` may be served: the loader asks it before fetching any artifact."""

    def __init__(
        self,
        registry: RegistryChampions,
        table: ModelTable | None = None,
        on_stale: Callable[[str], None] | None = None,
    ) -> None:
        self.registry = registry
        # A refusal is also the model's last refused load (``GET /v1/models/{name}`` shows it).
        self.table = table
        self.on_stale = on_stale or (lambda _model: None)
        self.last_refused: Refusal | None = None
        # Events this replica made itself from the registry's answer (the reconciler's): already checked.
        self._vouched: set[str] = set()
        self._lock = threading.Lock()

    def vouch(self, event: Event[ModelPromoted]) -> None:
        with self._lock:
            self._vouched.add(event.id)

    def __call__(self, event: Event[ModelPromoted]) -> bool:
        with self._lock:
            if event.id in self._vouched:
                self._vouched.discard(event.id)
                return True
        promoted = event.payload
        model, version = promoted.model, promoted.version
        try:
            known = self.registry.version(model, version)
            champion = self.registry.champion(model) if known is not None else None
        except DriftloopError as exc:
            # Fail closed: nothing is loaded unverified. The reconciler loads the champion once the registry answers.
            log.warning("%s v%d: not loaded now, the registry cannot confirm it (%s)", model, version, exc)
            self.on_stale(model)
            return False
        if known is None:
            return self._refuse(event, f"the registry has no version {version} of {model}")
        if (known.artifact_uri, known.artifact_sha256) != (promoted.artifact_uri, promoted.artifact_sha256):
            return self._refuse(
                event,
                f"artifact {promoted.artifact_uri} (sha256 {promoted.artifact_sha256[:12]}) is not the registry's "
                f"v{version}: {known.artifact_uri} (sha256 {known.artifact_sha256[:12]})",
            )
        if champion is not None and champion.version.version == version:
            return True
        champion_at = champion.updated_at if champion is not None else None
        if champion_at is not None and event.envelope.occurred_at <= champion_at:
            # History replayed from the bus: the champion moved on since. The reconciler serves the current one.
            log.info("%s v%d: an older promotion (the champion is v%d now); skipped", model, version,
                     champion.version.version if champion else 0)  # fmt: skip
            self.on_stale(model)
            return False
        current = f"v{champion.version.version}" if champion is not None else "none"
        return self._refuse(event, f"the registry's champion of {model} is {current}, not v{version}")

    def _refuse(self, event: Event[ModelPromoted], reason: str) -> bool:
        promoted = event.payload
        refusal = Refusal(
            model=promoted.model,
            version=promoted.version,
            event_id=event.id,
            producer=event.envelope.producer,
            reason=reason,
            at=datetime.now(tz=UTC),
        )
        with self._lock:
            self.last_refused = refusal
        if self.table is not None:
            problem = LoadProblem(promoted.version, promoted.artifact_sha256, reason, refusal.at)
            self.table.refuse(promoted.model, problem)
        REFUSED_PROMOTIONS.labels(promoted.model).inc()
        log.error(
            "REFUSED ModelPromoted %s (%s v%d, producer %r): %s; the registry did not make this move",
            event.id,
            promoted.model,
            promoted.version,
            event.envelope.producer,
            reason,
        )
        return False

    def describe_last_refused(self) -> dict[str, Any] | None:
        with self._lock:
            return self.last_refused.describe() if self.last_refused else None


def champion_event(champion: RegistryChampion) -> Event[ModelPromoted]:
    """The ``ModelPromoted`` that announced the champion (same event id and cascade, so that rollbacks and the
    timeline match it), rebuilt from the registry's answer."""
    v = champion.version
    event_id = champion.event_id or f"reconciled-{v.model}-{v.version}-{v.artifact_sha256[:12]}"
    payload = ModelPromoted(
        model=v.model,
        version=v.version,
        alias=CHAMPION,
        previous_version=None,
        artifact_uri=v.artifact_uri,
        artifact_sha256=v.artifact_sha256,
        dataset_version_id=v.dataset_version_id,
        feature_set_uri=v.feature_set_uri,
        reason=champion.reason,
        gate_json="{}",
        moved_by=champion.moved_by,
        rollback=False,
    )
    return stored_event(
        payload,
        event_id=event_id,
        occurred_at=champion.updated_at or datetime.now(tz=UTC),
        producer="registry",
        caused_by=champion.caused_by,
        cascade_id=champion.cascade_id,
    )


class ChampionReconciler:
    """Loads each model's champion as the registry says it: at start, every ``interval`` seconds, and at once
    when the check saw a promotion it could not serve."""

    def __init__(
        self,
        registry: RegistryChampions,
        check: PromotionCheck,
        table: ModelTable,
        rollouts: RolloutController,
        submit: Callable[[Event[ModelPromoted]], None],
        models: Collection[str],  # read at each reconcile: the pipeline catalog (models applied live too)
        interval: float,
    ) -> None:
        self.registry = registry
        self.check = check
        self.table = table
        self.rollouts = rollouts
        self.submit = submit
        self._models = models
        self.interval = interval
        self.reconciled_once = False
        # model -> champion version the registry named at the last reconcile (None: no champion yet).
        self.champions: dict[str, int | None] = {}
        self.last_error: str | None = None
        # model -> (version, sha256) last submitted to the loader, and when.
        self._submitted: dict[str, tuple[tuple[int, str], float]] = {}
        self._wake = threading.Event()
        self._lock = threading.Lock()

    def wake(self, _model: str | None = None) -> None:
        self._wake.set()

    def reconcile_once(self) -> list[str]:
        """Submit the champion of every model whose served (or rolling-out) version is not the registry's.
        Returns the models submitted. Raises ``DriftloopError`` if the registry does not answer."""
        submitted = []
        champions: dict[str, int | None] = {}
        for model in sorted(self._models):
            champion = self.registry.champion(model)
            champions[model] = champion.version.version if champion else None
            if champion is None:
                continue
            v = champion.version
            served = self.table.get(model)
            if served is not None and (served.version, served.sha256) == (v.version, v.artifact_sha256):
                continue
            rollout = self.rollouts.get(model)
            if rollout is not None and rollout.challenger.version == v.version:
                continue
            key = (v.version, v.artifact_sha256)
            now = time.monotonic()
            if self._submitted.get(model, (None, 0.0))[0] == key and now - self._submitted[model][1] < RESUBMIT_AFTER:
                continue  # submitted a moment ago: the loader is at it (a first load may take seconds)
            self._submitted[model] = (key, now)
            event = champion_event(champion)
            self.check.vouch(event)
            log.info(
                "%s: the registry's champion is v%d, this replica serves %s: loading it",
                model,
                v.version,
                f"v{served.version}" if served else "nothing",
            )
            RECONCILE_LOADS.labels(model).inc()
            self.submit(event)
            submitted.append(model)
        with self._lock:
            self.champions = champions
            self.reconciled_once = True
            self.last_error = None
        return submitted

    def run(self, stop_event: threading.Event) -> None:
        while not stop_event.is_set():
            try:
                self.reconcile_once()
            except DriftloopError as exc:
                with self._lock:
                    self.last_error = f"the registry did not answer: {exc}"
                log.warning("champion reconcile: %s; trying again", exc)
            except Exception as exc:  # the reconciler must outlive any one bad answer
                with self._lock:
                    self.last_error = repr(exc)
                log.exception("champion reconcile failed")
            self._sleep(self.interval if self.reconciled_once else min(self.interval, 1.0), stop_event)

    def _sleep(self, seconds: float, stop_event: threading.Event) -> None:
        """Until ``seconds`` pass, ``wake`` is called or the service stops (checked every half second: a stopping
        service must not wait out a whole interval)."""
        deadline = time.monotonic() + seconds
        while not stop_event.is_set() and (left := deadline - time.monotonic()) > 0:
            if self._wake.wait(min(left, 0.5)):
                break
        self._wake.clear()

    def not_ready_because(self) -> str | None:
        """Why this replica is not ready to serve (None: it serves every champion the registry has)."""
        with self._lock:
            if not self.reconciled_once:
                return self.last_error or "has not asked the registry for the champions yet"
            champions = dict(self.champions)
        missing = []
        for model, version in champions.items():
            if version is None:
                continue
            if self.table.get(model) is None:
                problem = self.table.problem(model)
                missing.append(f"{model} v{version} not loaded" + (f" ({problem.reason})" if problem else ""))
        return "; ".join(missing) or None

    def describe(self) -> dict[str, Any]:
        why = self.not_ready_because()
        with self._lock:
            return {
                "champions": dict(self.champions),
                "reconciled": self.reconciled_once,
                "last_error": self.last_error,
                "not_ready_because": why,
            }
