"""The monitor asks the registry which version is the champion at start: it watches it when its own record is
missing or older (the bus lost the promotion), and keeps a newer promotion it handled from the bus."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from driftloop.clients.db import create_engine_for, migrate, session_factory
from driftloop.clients.db.models import MonitoredModel
from driftloop.contracts.events import Event
from driftloop.errors import ServiceError
from driftloop.services.monitor.champion import ChampionReconcile


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
