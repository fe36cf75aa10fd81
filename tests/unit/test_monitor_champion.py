"""The monitor asks the registry which version is the champion at start: it watches it when its own record is
missing or older (the bus lost the promotion), and keeps a newer promotion it handled from the bus. A model applied
live is asked about when its pipeline arrives."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from model_factory import make_pipeline

from driftloop.clients.db import create_engine_for, migrate, session_factory
from driftloop.clients.db.models import MonitoredModel
from driftloop.contracts.events import Event
from driftloop.errors import NotFoundError, ServiceError
from driftloop.runtime.pipelines import PipelineCatalog
from driftloop.services.monitor.champion import AppliedModels, ChampionReconcile, promotion_from_alias
from driftloop.services.monitor.handlers import MonitorHandlers


def alias(version: int, at: datetime) -> dict[str, Any]:
    return {
        "model": "m",
        "alias": "champion",
        "version": version,
        "moved_by": "registry",
        "reason": "gate",
        "event_id": f"promotion-{version}",
        "cascade_id": f"cascade-{version}",
        "caused_by": f"completed-{version}",
        "updated_at": at.isoformat(),
        "model_version": {
            "version": version,
            "artifact_uri": f"file:///a/{version}",
            "artifact_sha256": "ab" * 32,
            "dataset_version_id": "tx@v3",
            "feature_set_uri": "file:///fs/3",
        },
    }


def test_the_registrys_champion_is_watched_unless_the_monitor_knows_newer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    Session = session_factory(create_engine_for(url))
    now = datetime.now(tz=UTC)
    answers: dict[str, Any] = {"m": alias(3, now - timedelta(minutes=1)), "new": None}
    promoted: list[Event] = []
    down = {"registry": True}
    refused = threading.Event()

    def get_alias(model: str) -> dict[str, Any] | None:
        if down["registry"]:
            refused.set()
            raise ServiceError("registry down", status_code=503, code="unreachable")
        return answers[model]

    reconcile = ChampionReconcile(get_alias, Session, promoted.append, ["m", "new"])
    stop = threading.Event()
    thread = threading.Thread(target=reconcile.run, args=(stop,), daemon=True)
    thread.start()
    assert refused.wait(10)  # asked while the registry is down: it keeps asking
    assert promoted == []
    down["registry"] = False
    thread.join(timeout=20)
    assert not thread.is_alive()
    (event,) = promoted  # "new" has no champion yet: nothing to watch
    assert (event.id, event.payload.version, event.payload.dataset_version_id) == ("promotion-3", 3, "tx@v3")
    assert (event.envelope.cascade_id, event.envelope.caused_by) == ("cascade-3", "completed-3")

    with Session.begin() as session:
        session.add(
            MonitoredModel(
                model="m", version=3, dataset_version_id="tx@v3", feature_set_uri="f", event_id="promotion-3",
                updated_at=now,
            )
        )  # fmt: skip
    assert not reconcile.reconcile_model("m")  # already watched
    answers["m"] = alias(4, now - timedelta(minutes=5))
    assert not reconcile.reconcile_model("m")  # the monitor handled v3 after that move: newer news, kept
    answers["m"] = alias(5, now + timedelta(seconds=1))
    assert reconcile.reconcile_model("m") and promoted[-1].payload.version == 5


def test_a_model_applied_live_is_asked_about_when_its_pipeline_arrives(tmp_path: Path) -> None:
    """A promotion handled before the model's pipeline arrived cannot be taken (the model is unknown) and the bus
    will not bring it again: when the pipeline is applied, the monitor asks the registry and watches the champion
    it names. A model of the start is not asked about again (the start-up reconcile did)."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    Session = session_factory(create_engine_for(url))
    catalog = PipelineCatalog({"m": make_pipeline(model="m", stream="tx-m")})
    handlers = MonitorHandlers(catalog, Session, store=None, publish=lambda event: None)  # type: ignore[arg-type]
    with pytest.raises(NotFoundError, match="late"):  # what the faust agent logs as a failed event, and drops
        handlers.on_model_promoted(promotion_from_alias("late", alias(3, datetime.now(tz=UTC))))

    asked: list[str] = []
    promoted: list[Event] = []

    def get_alias(model: str) -> dict[str, Any] | None:
        asked.append(model)
        return alias(3, datetime.now(tz=UTC))

    applied = AppliedModels(ChampionReconcile(get_alias, Session, promoted.append, catalog), catalog)
    catalog.on_change(applied.changed)
    stop = threading.Event()
    thread = threading.Thread(target=applied.run, args=(stop,), daemon=True)
    thread.start()
    try:
        catalog.put(make_pipeline(model="late", stream="tx-late"))
        deadline = time.monotonic() + 10
        while not promoted and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)
    (event,) = promoted
    assert (event.payload.model, event.payload.version, event.id) == ("late", 3, "promotion-3")
    assert asked == ["late"]
