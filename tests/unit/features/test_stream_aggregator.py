"""The stream worker's aggregator on SQLite: a batch's entities are computed together, and each entity's row
features are still what its newest record alone gives (an int next to a missing value stays an int)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from driftloop.clients.db import create_engine_for, migrate
from driftloop.contracts.pipeline import parse_pipeline
from driftloop.services.features.streaming import StreamAggregator

REPO = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
EXTRA = """  - {name: hour_bucket, source: hour, kind: categorical}
  - {name: tx_count_1h, aggregate: count, window: 1h}
"""


class Online:
    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}

    def write(self, rows: list[dict[str, Any]]) -> int:
        self.values.update({r["entity"]: r["values"] for r in rows})
        return len(rows)


def record(entity: str, minutes: int, hour: int | None) -> dict[str, Any]:
    return {
        "customer_id": entity,
        "event_time": T0 + timedelta(minutes=minutes),
        "amount": 10.0 + minutes,
        "age": 30,
        "merchant_category": "travel",
        "hour": hour,
        "is_fraud": 0,
    }


def test_each_entity_gets_its_newest_record_s_values_and_its_window_count(tmp_path: Path) -> None:
    text = (REPO / "pipelines" / "transactions.yaml").read_text()
    pipeline = parse_pipeline(
        text.replace(
            "  - {name: merchant_category, kind: categorical}\n",
            "  - {name: merchant_category, kind: categorical}\n" + EXTRA,
        )
    )
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    online = Online()
    aggregator = StreamAggregator(create_engine_for(url), pipeline, online)
    batch = [
        ("t/0/1", record("a", 0, 5)),
        ("t/0/2", record("a", 10, 3)),  # a's newest
        ("t/0/3", record("b", 5, None)),  # b's newest: no hour
        ("t/0/4", record("c", 90, 7)),
        ("t/0/5", record("c", 0, 1)),  # older than c's newest, outside its hour
    ]
    assert aggregator.apply(batch) == 3
    assert online.values["a"]["hour_bucket"] == "3"
    assert online.values["b"]["hour_bucket"] is None
    assert online.values["c"]["hour_bucket"] == "7"
    assert online.values["a"]["amount"] == 20.0
    assert [online.values[e]["tx_count_1h"] for e in "abc"] == [2.0, 1.0, 1.0]
    # A redelivered record changes nothing; a later one moves its entity forward.
    assert aggregator.apply([("t/0/2", record("a", 10, 3)), ("t/0/6", record("b", 20, 4))]) == 2
    assert online.values["a"]["tx_count_1h"] == 2.0 and online.values["b"]["hour_bucket"] == "4"
