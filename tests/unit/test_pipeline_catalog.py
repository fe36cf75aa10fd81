"""``PipelineCatalog``: what a service process holds of the pipelines, changed live by ``PipelineApplied`` events.
A valid document is taken (a new model, a changed one), a bad one is ignored with the old set kept, a removal drops
the model, an event from before the load or before the model's last change is stale, and listeners hear each
change."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from driftloop.contracts.events import new_event
from driftloop.contracts.payloads import PipelineApplied
from driftloop.runtime.pipelines import PipelineCatalog, document_sha256

REPO = Path(__file__).resolve().parents[2]
TRANSACTIONS = (REPO / "pipelines" / "transactions.yaml").read_text()
WEATHER = TRANSACTIONS.replace("name: transactions", "name: weather").replace(
    "name: fraud-detector", "name: rain-model"
)
LATER = datetime.now(tz=UTC) + timedelta(days=1)  # after the fixtures load their catalogs


def applied(document: str, model: str = "rain-model", *, sha256: str | None = None) -> PipelineApplied:
    return PipelineApplied(
        model=model,
        stream="weather",
        document=document,
        sha256=document_sha256(document) if sha256 is None else sha256,
        removed=False,
    )


def removed(model: str = "rain-model") -> PipelineApplied:
    return PipelineApplied(model=model, stream="weather", document="", sha256="", removed=True)


@pytest.fixture
def catalog(tmp_path: Path) -> PipelineCatalog:
    shutil.copy(REPO / "pipelines" / "transactions.yaml", tmp_path / "transactions.yaml")
    return PipelineCatalog.load(tmp_path)


def test_a_new_pipeline_is_taken_then_changed_then_removed(catalog: PipelineCatalog) -> None:
    changes: list[list[str]] = []
    catalog.on_change(lambda: changes.append(sorted(catalog)))
    before = catalog.snapshot()

    assert catalog.take(applied(WEATHER), LATER) == "applied"
    assert sorted(catalog) == ["fraud-detector", "rain-model"]
    assert catalog["rain-model"].stream.name == "weather"
    assert "rain-model" not in before  # a reader holding the old set is not changed under its feet

    more_rows = WEATHER.replace("cut_every_rows: ", "cut_every_rows: 1")
    assert more_rows != WEATHER
    assert catalog.take(applied(more_rows), LATER + timedelta(seconds=1)) == "applied"
    assert catalog["rain-model"].dataset.cut_every_rows != catalog["fraud-detector"].dataset.cut_every_rows
    assert catalog.take(applied(more_rows), LATER + timedelta(seconds=2)) == "unchanged"

    assert catalog.take(removed(), LATER + timedelta(seconds=3)) == "removed"
    assert sorted(catalog) == ["fraud-detector"]
    assert changes == [["fraud-detector", "rain-model"], ["fraud-detector", "rain-model"], ["fraud-detector"]]


def test_a_bad_document_is_ignored_and_the_old_pipeline_kept(catalog: PipelineCatalog) -> None:
    assert catalog.take(applied(WEATHER), LATER) == "applied"
    kept = catalog["rain-model"]
    broken = WEATHER.replace("stream:", "streem:", 1)
    outcomes = [
        catalog.take(applied(broken), LATER + timedelta(seconds=1)),  # does not parse
        catalog.take(applied(WEATHER, sha256="0" * 64), LATER + timedelta(seconds=2)),  # not what was sent
        catalog.take(applied(WEATHER, model="other-model"), LATER + timedelta(seconds=3)),  # another model's file
        # Its stream is the stream of fraud-detector.
        catalog.take(
            applied(TRANSACTIONS.replace("name: fraud-detector", "name: copy"), model="copy"),
            LATER + timedelta(seconds=4),
        ),
    ]
    assert all(o.startswith("refused") for o in outcomes), outcomes
    assert catalog["rain-model"] is kept and sorted(catalog) == ["fraud-detector", "rain-model"]


def test_the_bus_handler_never_raises_on_a_bad_document(catalog: PipelineCatalog) -> None:
    catalog.handle(new_event(applied("stream: [unclosed"), producer="test"))
    assert sorted(catalog) == ["fraud-detector"]


def test_events_from_before_the_load_or_the_last_change_are_stale(tmp_path: Path) -> None:
    (tmp_path / "weather.yaml").write_text(WEATHER)
    (tmp_path / "transactions.yaml").write_text(TRANSACTIONS)
    loaded = datetime.now(tz=UTC)
    catalog = PipelineCatalog.load(tmp_path)
    # History the files already hold (a compacted topic replayed, another deployment's changes): not taken.
    assert catalog.take(removed(), loaded - timedelta(minutes=5)) == "stale"
    assert catalog.take(applied(WEATHER, model="copy"), loaded - timedelta(minutes=5)) == "stale"
    assert sorted(catalog) == ["fraud-detector", "rain-model"]
    assert catalog.take(removed(), loaded + timedelta(minutes=5)) == "removed"
    # An apply from before the removal does not bring the model back.
    assert catalog.take(applied(WEATHER), loaded + timedelta(minutes=1)) == "stale"
    assert "rain-model" not in catalog
