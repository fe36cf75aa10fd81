"""TrainingCompleted → register a version (with lineage) → gate it against the champion → promote or reject."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import Counter

from driftloop.clients.objectstore import ObjectStore
from driftloop.clients.retry import retry
from driftloop.contracts.aliases import CHAMPION
from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import (
    AliasMoveRefused,
    ModelPromoted,
    ModelRegistered,
    ModelRejected,
    RolloutRolledBack,
    TrainingCompleted,
)
from driftloop.contracts.pipeline import PipelineConfig, pipeline_for_model
from driftloop.errors import ConflictError, DriftloopError, NotFoundError, ServiceUnavailable
from driftloop.runtime.bus import EventBus

from . import gate as gating
from .repository import AliasMoved, Registry, event_from_json, event_to_json

log = logging.getLogger(__name__)

PRODUCER = "registry"

GATE_DECISIONS = Counter("driftloop_registry_gate_decisions_total", "Gate decisions", ["model", "decision"])
ROLLOUT_ROLLBACKS = Counter(
    "driftloop_registry_rollout_rollbacks_total",
    "Serving rollbacks followed by the champion alias, by outcome (moved, already, moved_elsewhere, unknown_version)",
    ["model", "outcome"],
)
# moved_by of the champion moves the registry makes on a serving rollback.
ROLLOUT_MOVER = "serving"


def signature_of(pipeline: PipelineConfig, feature_names: list[str]) -> dict[str, Any]:
    """What the version answers on: the raw stream fields a predict request sends (all but the label), the
    features the model computes from them, and its output."""
    stream = pipeline.stream
    return {
        "inputs": [
            {"name": f.name, "type": str(f.type), "nullable": f.nullable}
            for f in stream.fields
            if f.name != stream.label
        ],
        "features": feature_names,
        "output": {"name": "prediction", "type": "double", "task": pipeline.model.task},
    }


def _json_or_raw(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {"raw": text}


def promotion(
    target: Any, alias: str, previous: int | None, *, reason: str, moved_by: str, rollback: bool
) -> ModelPromoted:
    """The ``ModelPromoted`` payload of moving ``alias`` to the version row ``target``."""
    return ModelPromoted(
        model=target.model,
        version=target.version,
        alias=alias,
        previous_version=previous,
        artifact_uri=target.artifact_uri,
        artifact_sha256=target.artifact_sha256,
        dataset_version_id=target.dataset_version_id,
        feature_set_uri=target.feature_set_uri,
        reason=reason,
        gate_json=json.dumps(target.gate or {}, sort_keys=True),
        moved_by=moved_by,
        rollback=rollback,
    )


class RegistryHandlers:
    def __init__(
        self,
        bus: EventBus,
        registry: Registry,
        store: ObjectStore,
        pipelines: Mapping[str, PipelineConfig],
        run_details: Callable[[str], dict[str, Any] | None] | None = None,
    ) -> None:
        self.bus = bus
        self.registry = registry
        self.store = store
        self.pipelines = pipelines
        # The training run's record (code version, environment) from the training service's API; best effort.
        self.run_details = run_details

    def on_training_completed(self, event: Event[TrainingCompleted]) -> None:
        completed = event.payload
        model = completed.model
        pipeline = pipeline_for_model(self.pipelines, model)
        row = self._version_row(event)
        row["signature"] = signature_of(pipeline, list(completed.feature_names))
        row["lineage"].update(self._more_lineage(completed, pipeline))
        version, created = self.registry.register(row, lambda v: self._registered(event, v))
        if created:
            log.info("registered %s v%d from run %s", model, version.version, completed.run_id)
        else:
            log.info(
                "run %s is already %s v%d (%s): re-sending its events",
                completed.run_id,
                model,
                version.version,
                version.status,
            )
        self._send_outbox(model, version.version, already_sent=0)
        if version.status == "registered":
            self._gate(event, version.version, pipeline)
            self._send_outbox(model, version.version, already_sent=1)

    # --- registration ------------------------------------------------------------------------------------

    def _version_row(self, event: Event[TrainingCompleted]) -> dict[str, Any]:
        env, completed = event.envelope, event.payload
        lineage = {
            "run_id": completed.run_id,
            "request_id": completed.request_id,
            "trigger": completed.trigger,
            "dataset_version_id": completed.dataset_version_id,
            "feature_set_uri": completed.feature_set_uri,
            "training_completed_event_id": event.id,
            "triggering_event_id": env.caused_by,
            "cascade_id": env.cascade_id,
            "trained_by": env.producer,
            "trained_at": env.occurred_at.isoformat(),
            "cause_chain": self.registry.cause_chain(env.caused_by),
            "params": _json_or_raw(completed.params_json),
            "holdout": _json_or_raw(completed.holdout_json),
            "feature_names": list(completed.feature_names),
        }
        return {
            "model": completed.model,
            "run_id": completed.run_id,
            "artifact_uri": completed.artifact_uri,
            "artifact_sha256": completed.artifact_sha256,
            "dataset_version_id": completed.dataset_version_id,
            "feature_set_uri": completed.feature_set_uri,
            "metrics": dict(completed.metrics),
            "lineage": lineage,
            "gate": {},
        }

    def _more_lineage(self, completed: TrainingCompleted, pipeline: PipelineConfig) -> dict[str, Any]:
        """Feature views (the pipeline's feature definitions, versioned by the dataset version of the feature
        set), and the run's code version and environment when the training service can tell them."""
        extra: dict[str, Any] = {
            "feature_views": {
                "version": completed.dataset_version_id,
                "feature_set_uri": completed.feature_set_uri,
                "features": [f.model_dump(exclude_none=True) for f in pipeline.features],
            },
            "code_version": None,
            "environment": None,
        }
        if self.run_details is not None and not self.registry.by_run(completed.run_id):
            run = self.run_details(completed.run_id)
            if run:
                extra["code_version"] = run.get("code_version")
                extra["environment"] = run.get("environment")
        return extra

    def _registered(self, cause: Event[TrainingCompleted], version: int) -> Event[ModelRegistered]:
        completed = cause.payload
        registered = ModelRegistered(
            model=completed.model,
            version=version,
            run_id=completed.run_id,
            artifact_uri=completed.artifact_uri,
            artifact_sha256=completed.artifact_sha256,
            dataset_version_id=completed.dataset_version_id,
            metrics=dict(completed.metrics),
        )
        return new_event(registered, producer=PRODUCER, cause=cause)

    def _send_outbox(self, model: str, version: int, already_sent: int) -> None:
        row = self.registry.get_version(model, version)
        for stored in row.outbox[already_sent:]:
            self.bus.publish(event_from_json(stored))

    # --- the gate ----------------------------------------------------------------------------------------

    def load_artifact(self, uri: str, sha256: str) -> ModelArtifact:
        return ModelArtifact.from_bytes(self.store.get_bytes(self.store.key_of(uri)), expected_sha256=sha256)

    def _gate(self, cause: Event[TrainingCompleted], version: int, pipeline: PipelineConfig) -> None:
        completed = cause.payload
        model = completed.model

        def gate_once() -> gating.GateResult:
            champion_row = self.registry.champion(model)
            result = self._evaluate(completed, pipeline, champion_row)
            gate_dict = result.as_dict(pipeline.gate, completed.dataset_version_id, completed.feature_set_uri)
            gate_dict["challenger_version"] = version
            gate_dict["config"] = pipeline.gate.model_dump()
            previous = champion_row.version if champion_row else None
            decision_event = self._decision_event(cause, version, pipeline, result, gate_dict, previous)
            self.registry.decide(
                model,
                version,
                promote=result.decision.promote,
                gate=gate_dict,
                expected_champion=previous,
                decision_event=decision_event,
            )
            return result

        try:
            # The champion moved while the challenger was evaluated: gate it again, against the new champion.
            result = retry(
                gate_once,
                attempts=3,
                retry_on=(AliasMoved,),
                first_delay=0.05,
                on_retry=lambda _attempt, exc, _delay: log.warning("%s; gating v%d again", exc, version),
            )
        except AliasMoved:
            raise DriftloopError(f"the champion of {model} kept moving while gating v{version}") from None
        outcome = "promoted" if result.decision.promote else "rejected"
        GATE_DECISIONS.labels(model, outcome).inc()
        log.info("%s v%d %s: %s", model, version, outcome, result.decision.reason)

    def _evaluate(self, completed: TrainingCompleted, pipeline: PipelineConfig, champion_row: Any) -> gating.GateResult:
        champion_version = champion_row.version if champion_row else None
        try:
            challenger = self.load_artifact(completed.artifact_uri, completed.artifact_sha256)
            holdout = gating.holdout_rows(gating.read_feature_set(self.store, completed.feature_set_uri), pipeline)
        except DriftloopError as exc:  # tampered/missing artifact, missing feature set: never promote it
            decision = gating.Decision(False, f"challenger cannot be evaluated: {exc}", None)
            return gating.GateResult(decision, math.nan, None, champion_version, 0, [])
        champion: ModelArtifact | None = None
        notes: list[str] = []
        if champion_row is not None:
            try:
                champion = self.load_artifact(champion_row.artifact_uri, champion_row.artifact_sha256)
            except DriftloopError as exc:
                notes.append(f"champion v{champion_version} could not be loaded ({exc}); gated on the threshold")
        result = gating.evaluate(pipeline, challenger, holdout, champion, champion_version)
        result.notes.extend(notes)
        return result

    def _decision_event(
        self,
        cause: Event[TrainingCompleted],
        version: int,
        pipeline: PipelineConfig,
        result: gating.GateResult,
        gate_dict: dict[str, Any],
        previous: int | None,
    ) -> Event[ModelPromoted] | Event[ModelRejected]:
        completed = cause.payload
        gate_json = json.dumps(gate_dict, sort_keys=True)
        if result.decision.promote:
            promoted = ModelPromoted(
                model=completed.model,
                version=version,
                alias=CHAMPION,
                previous_version=previous,
                artifact_uri=completed.artifact_uri,
                artifact_sha256=completed.artifact_sha256,
                dataset_version_id=completed.dataset_version_id,
                feature_set_uri=completed.feature_set_uri,
                reason=result.decision.reason,
                gate_json=gate_json,
                moved_by=PRODUCER,
                rollback=False,
            )
            return new_event(promoted, producer=PRODUCER, cause=cause)
        rejected = ModelRejected(
            model=completed.model,
            version=version,
            reason=result.decision.reason,
            metric=pipeline.gate.metric,
            challenger_score=result.challenger_score,
            champion_score=result.champion_score,
            champion_version=result.champion_version,
            gate_json=gate_json,
        )
        return new_event(rejected, producer=PRODUCER, cause=cause)

    # --- alias moves and rollback (HTTP) -----------------------------------------------------------------

    def move_alias(
        self,
        model: str,
        alias: str,
        version: int,
        *,
        moved_by: str,
        reason: str,
        expected_version: Any = ...,
        rollback: bool = False,
    ) -> dict[str, Any]:
        """Move ``alias`` to ``version`` and announce it with ``ModelPromoted`` (serving follows ``champion``)."""
        target = self.registry.get_version(model, version)

        def make_event(previous: int | None) -> Event[ModelPromoted]:
            promoted = promotion(target, alias, previous, reason=reason, moved_by=moved_by, rollback=rollback)
            return new_event(promoted, producer=PRODUCER)

        row, event, moved = self.registry.move_alias(
            model,
            alias,
            version,
            moved_by=moved_by,
            reason=reason,
            make_event=make_event,
            expected_version=expected_version,
        )
        try:
            self.bus.publish(event)
        except Exception as exc:  # the move is stored with its event: the same request re-sends it
            raise EventNotSent(
                f"alias {alias!r} of {model} now points at v{version}, but its ModelPromoted event {event.id} was not "
                f"published ({exc}); repeat the request to re-send it"
            ) from exc
        log.info(
            "%s alias %s -> v%d by %s (%s)%s", model, alias, version, moved_by, reason, "" if moved else " (unchanged)"
        )
        return {
            "model": model,
            "alias": alias,
            "version": version,
            "previous_version": event.payload.previous_version,
            "moved": moved,
            "moved_by": row.moved_by,
            "reason": row.reason,
            "event_id": event.id,
            "event": event_to_json(event)["data"],
        }

    def rollback(self, model: str, to: int | None, *, moved_by: str, reason: str) -> dict[str, Any]:
        """Move ``champion`` back to ``to`` (default: the newest promoted version older than the champion; versions
        in status ``rolled_back`` are skipped, naming one in ``to`` still works)."""
        champion = self.registry.champion(model)
        if champion is None:
            if not self.registry.model_exists(model):
                raise NotFoundError(f"unknown model {model!r}: no version of it has been registered")
            raise RollbackImpossible(f"model {model!r} has no champion to roll back")
        if to is None:
            previous = self.registry.previous_champion(model, before=champion.version)
            if previous is None:
                raise RollbackImpossible(
                    f"{model} v{champion.version} is the first promoted version: nothing earlier to roll back to "
                    "(versions serving rolled back are skipped; name one with `to`)"
                )
            to = previous.version
        if to == champion.version:
            raise RollbackImpossible(f"v{to} is already the champion of {model}")
        return self.move_alias(
            model,
            CHAMPION,
            to,
            moved_by=moved_by,
            reason=reason or f"rollback from v{champion.version}",
            expected_version=champion.version,
            rollback=True,
        )

    # --- rollbacks by serving (RolloutRolledBack) ---------------------------------------------------------

    def on_rollout_rolled_back(self, event: Event[RolloutRolledBack]) -> None:
        """A serving replica judged a canary/shadow challenger worse and kept the champion: move the ``champion``
        alias back to the version serving kept, so that every replica (a new one replaying the promotions too)
        serves it. Once per rolled-back promotion: other replicas' rollbacks of it and redeliveries move nothing.
        If the alias moved since that promotion (a newer promotion, a user), it stays: logged, ``AliasMoveRefused``."""
        stopped = event.payload
        model, rolled_back, kept = stopped.model, stopped.version, stopped.champion_version
        origin = stopped.origin or "verdict"
        promotion_id = event.envelope.caused_by
        if origin != "verdict" or promotion_id is None:
            # Consequences of another move (followed, superseded, champion moved): the champion is already decided.
            log.info(
                "%s: rollback of v%d on replica %s (%s): nothing to move", model, rolled_back, stopped.replica, origin
            )
            return
        if not self.registry.model_exists(model):
            log.warning("%s: serving rolled back v%d of a model this registry does not know", model, rolled_back)
            return
        reason = f"serving rolled back v{rolled_back} on replica {stopped.replica}: {stopped.reason}"

        def make_event(previous: int | None, target: Any) -> Event[ModelPromoted]:
            promoted = promotion(target, CHAMPION, previous, reason=reason, moved_by=ROLLOUT_MOVER, rollback=True)
            return new_event(promoted, producer=PRODUCER, cause=event)

        outcome, moved, alias = self.registry.follow_rollout_rollback(
            model,
            rolled_back_version=rolled_back,
            kept_version=kept,
            promotion_event_id=promotion_id,
            rollback_event_id=event.id,
            moved_by=ROLLOUT_MOVER,
            reason=reason,
            make_event=make_event,
        )
        ROLLOUT_ROLLBACKS.labels(model, outcome).inc()
        if outcome in ("moved_elsewhere", "unknown_version"):
            current = alias.version if alias is not None else None
            if outcome == "unknown_version":
                why = f"serving kept v{kept} of {model}, which this registry does not have; champion stays v{current}"
            elif alias is None:
                why = f"{model} has no champion alias; not moving it to v{kept}"
            else:
                why = (
                    f"champion of {model} is v{current} (moved by {alias.moved_by or 'registry'}: {alias.reason}) "
                    f"since the promotion of v{rolled_back} that serving rolled back; not moving it to v{kept}"
                )
            log.warning("%s", why)
            refused = AliasMoveRefused(
                model=model,
                alias=CHAMPION,
                requested_version=kept,
                current_version=current,
                expected_version=rolled_back,
                requested_by=ROLLOUT_MOVER,
                reason=why,
            )
            self.bus.publish(new_event(refused, producer=PRODUCER, cause=event))
            return
        if moved is not None:
            self.bus.publish(moved)  # stored on the alias row first: a redelivery re-sends the same event id
        if outcome == "moved":
            log.warning("%s: champion moved back v%d -> v%d (%s)", model, rolled_back, kept, reason)
        else:
            log.info(
                "%s: champion is already v%d; rollback of v%d on %s moves nothing",
                model,
                kept,
                rolled_back,
                stopped.replica,
            )


class EventNotSent(ServiceUnavailable):
    """An alias moved but its event could not be published (the broker is down): repeating the call re-sends it."""

    default_code = "event_not_sent"


class RollbackImpossible(ConflictError):
    """Nothing to roll back to (no champion, or no earlier promoted version)."""

    default_code = "rollback_impossible"
