"""At start the triggers check their state against its owners, since the bus may have lost the news (an embedded
broker restarted empty, truncated topics): each model's champion from the registry, and each run they hold as
active from the training service. A run that ended meanwhile is handled as if its ``RunStateChanged`` had
arrived: it stops counting as active, and the request queued behind it fires. Pending causes live in the database
(``training_requests``) and need nothing from the bus."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from driftloop.clients.credentials import client_token
from driftloop.clients.db.models import TriggerModelState
from driftloop.clients.http import ServiceClient
from driftloop.clients.retry import each_until_done
from driftloop.contracts.aliases import CHAMPION
from driftloop.contracts.events import new_event
from driftloop.contracts.payloads import ModelPromoted, RunStateChanged
from driftloop.contracts.settings import Settings
from driftloop.errors import DriftloopError, NotFoundError

from .handlers import ACTIVE_RUN_STATES, TriggerHandlers

log = logging.getLogger(__name__)


class StateReconcile:
    def __init__(
        self,
        handlers: TriggerHandlers,
        session_factory: sessionmaker[Session],
        get_champion: Callable[[str], dict[str, Any] | None],
        get_run: Callable[[str], dict[str, Any] | None],
        models: Iterable[str],
        producer: str = "triggers",
    ) -> None:
        self.handlers = handlers
        self.Session = session_factory
        self.get_champion = get_champion
        self.get_run = get_run
        self.models = sorted(models)
        self.producer = producer

    def reconcile_model(self, model: str) -> list[str]:
        """Bring ``model``'s champion and active runs in line with their owners; returns what changed. Raises
        ``DriftloopError`` when an owner does not answer."""
        changed: list[str] = []
        with self.Session() as session:
            state = session.get(TriggerModelState, model)
            known_champion = state.champion_version if state else None
            active = list(state.active_runs) if state else []
        champion = self.get_champion(model)
        if champion is not None and int(champion["version"]) != known_champion:
            version = champion["model_version"]
            promoted = ModelPromoted(
                model=model,
                version=int(champion["version"]),
                alias=CHAMPION,
                previous_version=known_champion,
                artifact_uri=str(version["artifact_uri"]),
                artifact_sha256=str(version["artifact_sha256"]),
                dataset_version_id=str(version.get("dataset_version_id") or ""),
                feature_set_uri=str(version.get("feature_set_uri") or ""),
                reason="reconciled from the registry at start",
                gate_json="{}",
            )
            self.handlers.on_model_promoted(new_event(promoted, producer=self.producer))
            changed.append(f"champion v{promoted.version}")
        for run_id in active:
            run = self.get_run(run_id)
            state_now = "failed" if run is None else str(run.get("state"))
            if state_now in ACTIVE_RUN_STATES:
                continue
            message = "the training service has no such run" if run is None else "ended while the bus was away"
            ended = RunStateChanged(run_id=run_id, model=model, state=state_now, message=message)
            self.handlers.on_run_state_changed(new_event(ended, producer=self.producer))
            changed.append(f"run {run_id} {state_now}")
        if changed:
            log.warning("triggers: %s reconciled at start: %s", model, ", ".join(changed))
        return changed

    def run(self, stop_event: threading.Event) -> None:
        each_until_done(
            list(self.models),
            self.reconcile_model,
            stop_event,
            what="triggers: reconciling the state",
            retry_on=(DriftloopError,),
        )


def state_reconcile(
    settings: Settings, handlers: TriggerHandlers, session_factory: sessionmaker[Session], models: Iterable[str]
) -> tuple[Callable[[threading.Event], None], Callable[[], None]]:
    """The start-up loop (for ``ServiceSpec.loops``) and its stop hook."""
    token = partial(client_token, settings)
    registry = ServiceClient("registry", settings, token=token, timeout=10.0, retries=1)
    training = ServiceClient("training", settings, token=token, timeout=10.0, retries=1)

    def get(client: ServiceClient, path: str) -> dict[str, Any] | None:
        try:
            return client.get(path)
        except NotFoundError:
            return None

    reconcile = StateReconcile(
        handlers,
        session_factory,
        lambda model: get(registry, f"/v1/models/{model}/aliases/{CHAMPION}"),
        lambda run_id: get(training, f"/v1/runs/{run_id}"),
        models,
    )

    def reconcile_trigger_state(stop_event: threading.Event) -> None:
        reconcile.run(stop_event)

    def close() -> None:
        registry.close()
        training.close()

    return reconcile_trigger_state, close
