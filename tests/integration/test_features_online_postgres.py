"""The online store's upsert on a real PostgreSQL (the same statement shape as on SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from driftloop.clients.db import create_engine_for, migrate
from driftloop.services.features.onlinestore import lookup_online, upsert_online

pytestmark = pytest.mark.integration


def row(stream: str, entity: str, amount: float, event_time: datetime) -> dict[str, object]:
    return {
        "stream": stream,
        "entity": entity,
        "values": {"amount": amount, "merchant_category": None},
        "event_time": event_time,
        "updated_at": datetime.now(tz=UTC),
    }


def test_upsert_moves_entities_forward_only_on_postgresql(postgres_url: str, unique: str) -> None:
    migrate(postgres_url)
    engine = create_engine_for(postgres_url)
    stream, t0 = f"tx-{unique}", datetime(2026, 5, 1, tzinfo=UTC)
    assert upsert_online(engine, [row(stream, "a", 1.0, t0), row(stream, "b", 2.0, t0)]) == 2
    later, earlier = t0 + timedelta(hours=1), t0 - timedelta(hours=1)
    upsert_online(engine, [row(stream, "a", 10.0, later), row(stream, "b", 20.0, earlier), row(stream, "c", 3.0, t0)])

    found = lookup_online(engine, stream, ["a", "b", "c", "d"])
    assert set(found) == {"a", "b", "c"}
    assert found["a"]["amount"] == 10.0 and found["a"]["event_time"] == later.isoformat()
    assert found["b"]["amount"] == 2.0  # the older value did not overwrite the newer one
    assert found["c"]["merchant_category"] is None
    engine.dispose()
