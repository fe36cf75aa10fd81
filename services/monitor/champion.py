"""Which version is the champion comes from the registry, not only from the bus: at start the monitor asks the
registry (``GET /v1/models/{m}/aliases/champion``, over HTTP with the settings' token) and watches the champion it
names when its own record (``monitored_models``) is missing or older, as if its ``ModelPromoted`` had arrived. So a
monitor started after the topics were truncated (or the embedded broker restarted empty) watches the right version.
A promotion handled from the bus after the registry's move (newer news) is kept.

A model whose pipeline is applied live (``driftloop pipeline apply``: the catalog changes) is asked about too, as
soon as it arrives (``AppliedModels``): a promotion the monitor handled before it had the model's pipeline could not
be taken (the model was unknown), and the bus will not bring it again."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from driftloop.clients.credentials import client_token
from driftloop.clients.db.models import MonitoredModel
from driftloop.clients.http import ServiceClient
from driftloop.clients.retry import each_until_done
from driftloop.contracts.aliases import CHAMPION
from driftloop.contracts.events import Event, stored_event
from driftloop.contracts.payloads import ModelPromoted
from driftloop.contracts.settings import Settings
from driftloop.errors import DriftloopError, NotFoundError

log = logging.getLogger(__name__)


def _utc(text: str | None) -> datetime | None:
    if not text:
        return None
    at = datetime.fromisoformat(text)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def promotion_from_alias(model: str, body: dict[str, Any]) -> Event[ModelPromoted]:
    """The ``ModelPromoted`` that moved the champion (same id and cascade), from the registry's alias answer."""
    version = body["model_version"]
    payload = ModelPromoted(
        model=model,
        version=int(body["version"]),
        alias=CHAMPION,
        previous_version=None,
        artifact_uri=str(version["artifact_uri"]),
        artifact_sha256=str(version["artifact_sha256"]),
        dataset_version_id=str(version.get("dataset_version_id") or ""),
        feature_set_uri=str(version.get("feature_set_uri") or ""),
        reason=str(body.get("reason") or ""),
        gate_json="{}",
        moved_by=str(body.get("moved_by") or "registry"),
        rollback=False,
    )
    event_id = body.get("event_id") or f"reconciled-{model}-{payload.version}"
    return stored_event(
        payload,
        event_id=event_id,
        occurred_at=_utc(body.get("updated_at")) or datetime.now(tz=UTC),
        producer="registry",
        caused_by=body.get("caused_by"),
        cascade_id=body.get("cascade_id"),
    )


class ChampionReconcile:
    """Run once at start (retrying until the registry answers for every model)."""

    def __init__(
        self,
        get_alias: Callable[[str], dict[str, Any] | None],
        session_factory: sessionmaker[Session],
        on_model_promoted: Callable[[Event[ModelPromoted]], None],
        models: Iterable[str],
    ) -> None:
        self.get_alias = get_alias
        self.Session = session_factory
        self.on_model_promoted = on_model_promoted
        self.models = sorted(models)

    def reconcile_model(self, model: str) -> bool:
        """Watch the registry's champion of ``model`` if the monitor's record is missing or older. True if it
        acted. Raises ``DriftloopError`` when the registry does not answer."""
        body = self.get_alias(model)
        if body is None:
            return False  # no champion yet
        version = int(body["version"])
        moved_at = _utc(body.get("updated_at"))
        with self.Session() as session:
            row = session.get(MonitoredModel, model)
            if row is not None:
                if row.version == version:
                    return False
                handled_at = row.updated_at if row.updated_at.tzinfo else row.updated_at.replace(tzinfo=UTC)
                if moved_at is not None and handled_at > moved_at:
                    return False  # a newer promotion came over the bus meanwhile
        log.info("monitor: the registry's champion of %s is v%d; watching it", model, version)
        self.on_model_promoted(promotion_from_alias(model, body))
        return True

    def run(self, stop_event: threading.Event) -> None:
        each_until_done(
            list(self.models),
            self.reconcile_model,
            stop_event,
            what="monitor: watching the registry's champion",
            retry_on=(DriftloopError,),
        )


class AppliedModels:
    """Reconciles the models applied since start: ``changed`` is the catalog's listener (``on_change``: it only
    wakes the loop), ``run`` the loop that asks the registry about each model new to the catalog (one removed and
    applied again too), retrying until the registry answers."""

    def __init__(self, reconcile: ChampionReconcile, catalog: Collection[str]) -> None:
        self.reconcile = reconcile
        self.catalog = catalog
        self.known = set(catalog)  # the models of the start: the start-up reconcile asks about those
        self._wake = threading.Event()

    def changed(self) -> None:
        self._wake.set()

    def run(self, stop_event: threading.Event) -> None:
        while not stop_event.is_set():
            if not self._wake.wait(0.5):
                continue
            self._wake.clear()
            current = set(self.catalog)
            new = sorted(current - self.known)
            self.known = current
            if new:
                each_until_done(
                    new,
                    self.reconcile.reconcile_model,
                    stop_event,
                    what="monitor: watching the registry's champion of an applied model",
                    retry_on=(DriftloopError,),
                )


def champion_reconcile(
    settings: Settings,
    session_factory: sessionmaker[Session],
    on_model_promoted: Callable[[Event[ModelPromoted]], None],
    catalog: Collection[str],
) -> tuple[Callable[[threading.Event], None], AppliedModels, Callable[[str], bool], Callable[[], None]]:
    """The start-up loop (for ``ServiceSpec.loops``), the reconcile of models applied later (its ``changed`` is
    the catalog's listener, its ``run`` a loop), the reconcile of one model now (raises ``DriftloopError`` when the
    registry does not answer) and the stop hook. ``catalog``: the pipeline catalog."""
    client = ServiceClient("registry", settings, token=partial(client_token, settings), timeout=10.0, retries=1)

    def get_alias(model: str) -> dict[str, Any] | None:
        try:
            return client.get(f"/v1/models/{model}/aliases/{CHAMPION}")
        except NotFoundError:
            return None

    reconcile = ChampionReconcile(get_alias, session_factory, on_model_promoted, catalog)
    applied = AppliedModels(reconcile, catalog)

    def reconcile_monitor_champions(stop_event: threading.Event) -> None:
        reconcile.run(stop_event)

    return reconcile_monitor_champions, applied, reconcile.reconcile_model, client.close
