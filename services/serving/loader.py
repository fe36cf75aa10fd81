"""Follow promotions: the consumer hands each ``ModelPromoted`` to a background loader thread, which fetches
and verifies the artifact and swaps it in. Requests never wait for a load.

Promotions queued for a model while a load runs are coalesced: the newest is loaded first, and older ones are
tried only if it is refused and nothing newer than them is served (a tampered artifact is never served)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge

from driftloop.clients.objectstore import ObjectStore
from driftloop.contracts.aliases import CHAMPION
from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import ModelPromoted, Payload, ServingSwitched
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.errors import DriftloopError

from .rollout import RolloutController
from .served import LoadProblem, ModelTable, ServedModel

log = logging.getLogger(__name__)

PRODUCER = "serving"

SWITCHES = Counter("driftloop_serving_switches_total", "Served model switches", ["model"])
REFUSED = Counter(
    "driftloop_serving_refused_loads_total", "Artifacts refused (unreadable or sha256 mismatch)", ["model"]
)
SERVED_VERSION = Gauge("driftloop_serving_version", "Model version this replica serves", ["model"])


class PromotionFollower:
    def __init__(
        self,
        table: ModelTable,
        store: ObjectStore,
        pipelines: Mapping[str, PipelineConfig],
        publish: Callable[[Event[Payload]], None],
        replica: str,
        rollouts: RolloutController | None = None,
        check: Callable[[Event[ModelPromoted]], bool] | None = None,
    ) -> None:
        self.table = table
        # Asked before any artifact is fetched: may this promotion be served? (``champions.PromotionCheck``: the
        # registry must have made it.) None: every promotion whose artifact matches its sha256 is served.
        self.check = check
        self.rollouts = rollouts or RolloutController(table, publish, replica)
        # Promotions from before this replica started are history being replayed: the newest is served at once.
        # Later ones go through the pipeline's rollout (canary/shadow), if it asks for one.
        now = datetime.now(tz=UTC)
        self.started_at = now.replace(microsecond=now.microsecond // 1000 * 1000)  # events carry milliseconds
        self.store = store
        self.pipelines = pipelines
        self.publish = publish
        self.replica = replica
        self._pending: dict[str, list[Event[ModelPromoted]]] = {}
        self._cond = threading.Condition()
        self._busy = False

    # --- consumer side (must return fast) -----------------------------------------------------------------

    def on_model_promoted(self, event: Event[ModelPromoted]) -> None:
        promoted = event.payload
        model = promoted.model
        alias = promoted.alias or CHAMPION
        if alias != CHAMPION:
            log.info(
                "ignoring %s alias move of %s to v%s: serving follows %s", alias, model, promoted.version, CHAMPION
            )
            return
        if model not in self.pipelines:
            log.warning("ignoring promotion of %s v%s: no pipeline config for it here", model, promoted.version)
            return
        with self._cond:
            self._pending.setdefault(model, []).append(event)
            self._cond.notify_all()

    def idle(self) -> bool:
        """Nothing queued and no load running (for tests and /healthz)."""
        with self._cond:
            return not self._pending and not self._busy

    # --- loader thread ------------------------------------------------------------------------------------

    def run(self, stop_event: threading.Event) -> None:
        while not stop_event.is_set():
            with self._cond:
                if not self._pending:
                    self._cond.wait(timeout=0.5)
                    continue
                model = next(iter(self._pending))
                candidates = self._pending.pop(model)
                self._busy = True
            try:
                self._load_newest(model, candidates)
            except Exception:  # the loader must survive anything a single artifact does
                log.exception("loading a promotion of %s failed", model)
            finally:
                with self._cond:
                    self._busy = False

    def _load_newest(self, model: str, candidates: list[Event[ModelPromoted]]) -> None:
        for event in reversed(candidates):
            promoted = event.payload
            current = self.table.get(model)
            if current is not None and (current.version, current.sha256) == (
                promoted.version,
                promoted.artifact_sha256,
            ):
                log.info(
                    "%s v%d is already served (redelivered promotion, or the champion moved back)",
                    model,
                    current.version,
                )
                running = self.rollouts.get(model)
                if running is not None and running.challenger.version != current.version:
                    # The champion alias is back on the served version (e.g. the registry followed another
                    # replica's rollback): the challenger's rollout here is over, it must not complete later.
                    self.rollouts.cancel(model, f"the champion moved back to v{current.version}")
                return
            rollout = self.rollouts.get(model)
            if rollout is not None and (rollout.challenger.version, rollout.challenger.sha256) == (
                promoted.version,
                promoted.artifact_sha256,
            ):
                log.info(
                    "%s v%d is already being rolled out (redelivered promotion)", model, rollout.challenger.version
                )
                return
            if self.rollouts.was_rolled_back(event.id):
                log.info("%s v%s: this promotion was rolled back; not rolling it out again", model, promoted.version)
                return
            if self.load(event):
                return

    def load(self, event: Event[ModelPromoted]) -> bool:
        """Check the promotion (``check``), fetch and verify the artifact, swap it in; emit ServingSwitched. False if
        refused."""
        if self.check is not None and not self.check(event):
            return False
        promoted = event.payload
        model, version, sha = promoted.model, promoted.version, promoted.artifact_sha256
        started = time.perf_counter()
        try:
            data = self.store.get_bytes(self.store.key_of(promoted.artifact_uri))
            artifact = ModelArtifact.from_bytes(data, expected_sha256=sha)
        except DriftloopError as exc:
            self._refuse(model, version, sha, str(exc))
            return False
        except Exception as exc:  # a corrupt model file that lightgbm cannot parse
            self._refuse(model, version, sha, f"artifact could not be loaded: {exc!r}")
            return False
        load_seconds = time.perf_counter() - started
        served = ServedModel(
            model=model,
            version=version,
            sha256=sha,
            artifact_uri=promoted.artifact_uri,
            artifact=artifact,
            pipeline=self.pipelines[model],
            loaded_at=datetime.now(tz=UTC),
            load_seconds=load_seconds,
            promoted_event_id=event.id,
        )
        _ = served.encoder, served.row_predictor  # prepared here, in the loader's thread, not by the first request
        spec = self.pipelines[model].serving.rollout
        current = self.table.get(model)
        if (
            spec.mode != "none"
            and current is not None
            and version > current.version  # an older version coming back (a registry rollback) switches at once
            and not promoted.rollback
            and event.envelope.occurred_at >= self.started_at
        ):
            self.rollouts.start(current, served, spec, event)
            return True
        self.rollouts.cancel(model, f"the champion moved to v{version} directly")
        previous = self.table.swap(served)
        SWITCHES.labels(model).inc()
        SERVED_VERSION.labels(model).set(version)
        log.info(
            "now serving %s v%d (was %s), loaded in %.3fs",
            model,
            version,
            previous.version if previous else None,
            load_seconds,
        )
        switched = new_event(
            ServingSwitched(
                model=model,
                version=version,
                previous_version=previous.version if previous else None,
                artifact_sha256=sha,
                replica=self.replica,
                load_seconds=load_seconds,
            ),
            producer=PRODUCER,
            cause=event,
        )
        try:
            self.publish(switched)
        except DriftloopError:
            log.exception("ServingSwitched for %s v%d was not published", model, version)
        return True

    def _refuse(self, model: str, version: int, sha: str, reason: str) -> None:
        REFUSED.labels(model).inc()
        current = self.table.get(model)
        log.error(
            "REFUSED %s v%d (%s); still serving %s",
            model,
            version,
            reason,
            f"v{current.version}" if current else "nothing",
        )
        self.table.refuse(model, LoadProblem(version=version, sha256=sha, reason=reason, at=datetime.now(tz=UTC)))
