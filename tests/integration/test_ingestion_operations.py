"""Operating the data plane, in process with the real broker, registry and Spark: HTTP Idempotency-Key (a retry
lands once), the dead-letter queue (counts by reason, replay of fixed records, exact counts after it), dataset
versions (sources, diff, retention compaction that breaks no version), uniqueness of (entity, event time) and
freshness."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pipeline_support import InProcessService, service_runtime, stream_pipeline, write_pipeline

from driftloop.clients.db.models import LandedBatch
from driftloop.clients.objectstore import open_object_store
from driftloop.clients.spark import stop_spark
from driftloop.contracts.layout import dataset_prefix
from driftloop.contracts.pipeline import StreamSpec
from driftloop.contracts.settings import Settings
from driftloop.services.ingestion.content_hash import content_hash_of_table
from driftloop.services.ingestion.service import build

pytestmark = pytest.mark.integration

START = datetime.now(tz=UTC).replace(microsecond=0) - timedelta(days=1)


@pytest.fixture(scope="module", autouse=True)
def one_spark_session_per_module() -> Iterator[None]:
    yield
    stop_spark()


@dataclass
class Ingestion(InProcessService):
    stream: str

    @property
    def spec(self) -> StreamSpec:
        return self.runtime.pipelines[f"model-{self.stream}"].stream

    def post(self, records: list[dict[str, Any]], key: str | None = None) -> Any:
        headers = {"Idempotency-Key": key} if key is not None else {}
        return self.client.post(f"/v1/streams/{self.stream}/records", json={"records": records}, headers=headers)

    def stats(self) -> dict[str, Any]:
        return self.client.get(f"/v1/streams/{self.stream}/stats").json()


@pytest.fixture
def ingestion(make_settings: Callable[..., Settings], tmp_path: Path, unique: str) -> Iterator[Ingestion]:
    stream = f"ops-{unique}"
    pipeline = stream_pipeline(
        stream,
        optional_fields=(),
        quality=[{"rule": "range", "field": "amount", "min": 0}],
        dataset={"unique_by": ["customer_id", "event_time"], "freshness_seconds": 3600},
    )
    write_pipeline(tmp_path / "pipelines", "ops", pipeline)
    settings = make_settings(pipelines_dir=tmp_path / "pipelines")
    with service_runtime("ingestion", settings) as runtime:
        spec = build(runtime)
        with TestClient(spec.app) as client:
            yield Ingestion(settings, runtime, client, stream)


def records(first: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "customer_id": f"c{i % 7}",
            "event_time": (START + timedelta(minutes=i)).isoformat(),
            "amount": float(i),
            "is_fraud": i % 2,
        }
        for i in range(first, first + count)
    ]


def test_idempotency_key_lands_a_retried_batch_once(ingestion: Ingestion) -> None:
    batch = [*records(0, 20), {"customer_id": "x", "event_time": START.isoformat(), "amount": -5.0}]
    first = ingestion.post(batch, key="batch-0001")
    assert first.status_code == 200, first.text
    assert (first.json()["accepted"], len(first.json()["rejected"]), first.json()["replayed"]) == (20, 1, False)
    retry = ingestion.post(batch, key="batch-0001")
    assert retry.status_code == 200, retry.text
    assert retry.json()["replayed"] is True
    assert retry.json()["request_id"] == first.json()["request_id"]
    stats = ingestion.stats()
    assert (stats["landed"], stats["dead_lettered"], stats["landed_batches"]) == (20, 1, 1)

    reused = ingestion.post(records(100, 3), key="batch-0001")
    assert reused.status_code == 422 and "Idempotency-Key" in reused.json()["detail"]
    assert ingestion.post(records(100, 3), key="").status_code == 422
    other = ingestion.post(records(100, 3), key="batch-0002")
    assert other.status_code == 200 and other.json()["accepted"] == 3
    assert ingestion.stats()["landed"] == 23


def test_dead_letter_queue_counts_and_replay(ingestion: Ingestion) -> None:
    bad = [
        {"customer_id": "a", "event_time": START.isoformat(), "amount": -1.0},  # out_of_range
        {"customer_id": "b", "event_time": START.isoformat(), "amount": -2.0},  # out_of_range
        {"customer_id": "c", "event_time": START.isoformat(), "amount": 1.0, "colour": "red"},  # unknown_field
        {"customer_id": "d", "amount": 1.0},  # missing_event_time
        {"customer_id": None, "event_time": START.isoformat(), "amount": 1.0},  # null_not_allowed
    ]
    assert ingestion.post([*records(0, 10), *bad]).status_code == 200
    listing = ingestion.client.get(f"/v1/streams/{ingestion.stream}/dead-letters", params={"with_original": True})
    assert listing.status_code == 200
    body = listing.json()
    assert body["counts"] == {
        "open": 5,
        "replayed": 0,
        "by_reason": {"missing_event_time": 1, "null_not_allowed": 1, "out_of_range": 2, "unknown_field": 1},
    }
    letters = {d["reason"] + d["message"][:12]: d for d in body["dead_letters"]}
    assert all(d["original_base64"] and d["source"].startswith("http:") for d in letters.values())
    ids = {d["reason"]: d["id"] for d in body["dead_letters"]}
    only = ingestion.client.get(f"/v1/streams/{ingestion.stream}/dead-letters", params={"reason": "out_of_range"})
    assert [d["reason"] for d in only.json()["dead_letters"]] == ["out_of_range", "out_of_range"]

    # Fix two of them; replaying the rest unfixed leaves them in the queue with their reason.
    fixes = {
        ids["unknown_field"]: {"customer_id": "c", "event_time": START.isoformat(), "amount": 1.0},
        ids["missing_event_time"]: {"customer_id": "d", "event_time": START.isoformat(), "amount": 1.0},
    }
    replay = ingestion.client.post(
        f"/v1/streams/{ingestion.stream}/dead-letters/replay", json={"fixes": {str(k): v for k, v in fixes.items()}}
    )
    assert replay.status_code == 200, replay.text
    result = replay.json()
    assert (result["selected"], result["replayed"]) == (5, 2)
    assert sorted(result["replayed_ids"]) == sorted(fixes)
    assert sorted(f["reason"] for f in result["still_failing"]) == ["null_not_allowed", "out_of_range", "out_of_range"]

    again = ingestion.client.post(f"/v1/streams/{ingestion.stream}/dead-letters/replay", json={"ids": sorted(fixes)})
    assert again.json()["selected"] == 0, "a replayed dead letter is not replayed twice"
    stats = ingestion.stats()
    assert (stats["records_in"], stats["landed"], stats["dead_lettered"]) == (15, 12, 3)
    assert stats["replayed_dead_letters"] == 2
    assert (
        ingestion.client.post(
            f"/v1/streams/{ingestion.stream}/dead-letters/replay", json={"ids": [1], "fixes": {"2": {}}}
        ).status_code
        == 422
    )


def client_json(ingestion: Ingestion, path: str) -> Any:
    response = ingestion.client.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def version_hash(ingestion: Ingestion, version: int) -> str:
    store = open_object_store(ingestion.settings)
    keys = [k for k in store.list(dataset_prefix(ingestion.stream, version)) if k.endswith(".parquet")]
    fs, root = store.arrow_filesystem()
    table = pads.dataset([f"{root}/{k}" for k in keys], filesystem=fs, format="parquet").to_table()
    return content_hash_of_table(table, ingestion.spec)


def test_dataset_sources_diff_and_retention(ingestion: Ingestion) -> None:
    client, stream = ingestion.client, ingestion.stream
    for first in (0, 30):
        assert ingestion.post(records(first, 30)).status_code == 200
    v1 = client.post(f"/v1/streams/{stream}/datasets").json()
    assert ingestion.post(records(60, 25)).status_code == 200
    v2 = client.post(f"/v1/streams/{stream}/datasets").json()
    assert (v1["row_count"], v2["row_count"], v2["parent_version_id"]) == (60, 85, v1["dataset_version_id"])

    shown = client.get(f"/v1/datasets/{v1['dataset_version_id']}").json()
    assert len(shown["sources"]) == 2 and all(s["source"].startswith("http:") for s in shown["sources"])
    assert sum(s["rows"] for s in shown["sources"]) == 60

    diff = client.get(f"/v1/streams/{stream}/datasets/diff").json()  # default: the last two versions
    assert (diff["from"], diff["to"]) == (v1["dataset_version_id"], v2["dataset_version_id"])
    assert (diff["rows_added"], diff["rows_removed"], diff["rows_unchanged"]) == (25, 0, 60)
    assert diff["profile_changes"]["amount"]["count"]["delta"] == 25
    assert diff["profile_changes"]["amount"]["max"] == {"from": 59.0, "to": 84.0, "delta": 25.0}
    backwards = client.get(f"/v1/streams/{stream}/datasets/diff", params={"from": "v2", "to": "1"}).json()
    assert (backwards["rows_added"], backwards["rows_removed"]) == (0, 25)
    assert client.get(f"/v1/streams/{stream}/datasets/diff", params={"from": "latest"}).status_code == 422
    assert client.get(f"/v1/streams/{stream}/datasets/diff", params={"from": "v9"}).status_code == 404

    hashes = {1: version_hash(ingestion, 1), 2: version_hash(ingestion, 2)}
    assert hashes == {1: v1["content_hash"], 2: v2["content_hash"]}
    compacted = client.post(f"/v1/streams/{stream}/datasets/compact", params={"keep_versions": 1}).json()
    assert [(c["dataset_version_id"], c["batches"], c["rows"]) for c in compacted["compacted"]] == [
        (v1["dataset_version_id"], 2, 60)
    ]
    store = open_object_store(ingestion.settings)
    with ingestion.runtime.bus.Session() as session:
        batches = session.scalars(sa.select(LandedBatch).where(LandedBatch.stream == stream)).all()
    old = [b for b in batches if b.dataset_version_id == v1["dataset_version_id"]]
    assert all(b.compacted_into == compacted["compacted"][0]["into"] for b in old)
    assert not any(store.exists(b.object_key) for b in old), "compacted batches are deleted"
    assert store.exists(compacted["compacted"][0]["into"])
    again = client.post(f"/v1/streams/{stream}/datasets/compact", params={"keep_versions": 1}).json()
    assert again["compacted"] == []
    # No version broke: same content, and the next cut still builds on them.
    assert {1: version_hash(ingestion, 1), 2: version_hash(ingestion, 2)} == hashes
    assert ingestion.post(records(85, 5)).status_code == 200
    v3 = client.post(f"/v1/streams/{stream}/datasets").json()
    assert (v3["row_count"], v3["new_rows"]) == (90, 5)
    assert ingestion.stats()["landed"] == 90


def test_uniqueness_of_entity_and_event_time_and_freshness(ingestion: Ingestion) -> None:
    client, stream = ingestion.client, ingestion.stream
    stale = ingestion.stats()["freshness"]
    assert (stale["fresh"], stale["newest_event_time"]) == (False, None)
    duplicates = [{**records(0, 1)[0], "amount": 1000.0 + k} for k in range(3)]  # same (c0, START), other amounts
    assert ingestion.post([*records(0, 10), *duplicates]).status_code == 200
    v1 = client.post(f"/v1/streams/{stream}/datasets").json()
    assert v1["row_count"] == 10
    assert v1["checks"] == {"unique_by": ["customer_id", "event_time"], "rows_before": 13, "duplicates_dropped": 3}
    # Later arrivals of keys the parent has are dropped too: the parent's rows stay.
    assert ingestion.post([*records(5, 5), *records(10, 2)]).status_code == 200
    v2 = client.post(f"/v1/streams/{stream}/datasets").json()
    assert (v2["row_count"], v2["checks"]["duplicates_dropped"]) == (12, 5)
    files = sorted((ingestion.settings.object_store_path / dataset_prefix(stream, 2)).rglob("*.parquet"))
    amounts = sorted(pads.dataset([str(f) for f in files], format="parquet").to_table().column("amount").to_pylist())
    assert amounts == [float(i) for i in range(12)], "one row per key, and the first landed one"

    freshness = ingestion.stats()["freshness"]
    assert freshness["fresh"] is False and freshness["age_seconds"] > 3600  # newest event a day old
    now = datetime.now(tz=UTC).isoformat()
    assert ingestion.post([{"customer_id": "n", "event_time": now, "amount": 1.0}]).status_code == 200
    assert ingestion.stats()["freshness"]["fresh"] is True


def test_cli_dlq_and_dataset_commands(ingestion: Ingestion, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import threading

    import uvicorn
    from typer.testing import CliRunner

    from driftloop.ops.cli import app
    from driftloop.ops.procs import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(ingestion.client.app, port=port, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    monkeypatch.setenv("DRIFTLOOP_SERVICES__INGESTION_PORT", str(port))
    runner = CliRunner()
    stream = ingestion.stream
    try:
        deadline = datetime.now(tz=UTC) + timedelta(seconds=20)
        while not server.started and datetime.now(tz=UTC) < deadline:
            threading.Event().wait(0.1)
        bad = {"customer_id": "z", "event_time": START.isoformat(), "amount": -3.0}
        assert ingestion.post([*records(0, 5), bad]).status_code == 200

        shown = runner.invoke(app, ["dlq", "show", stream, "--json"])
        assert shown.exit_code == 0, shown.output
        letters = json.loads(shown.output)
        assert letters["counts"]["by_reason"] == {"out_of_range": 1}
        fixes = tmp_path / "fixes.jsonl"
        fixed = {**bad, "amount": 3.0}
        fixes.write_text(json.dumps({"id": letters["dead_letters"][0]["id"], "record": fixed}) + "\n")
        replayed = runner.invoke(app, ["dlq", "replay", stream, "--fixes", str(fixes)])
        assert replayed.exit_code == 0, replayed.output
        assert json.loads(replayed.output)["replayed"] == 1

        # Cuts through the API (Spark may take longer than the CLI's HTTP timeout on a busy machine).
        assert ingestion.client.post(f"/v1/streams/{stream}/datasets").status_code == 200
        assert ingestion.post(records(5, 4)).status_code == 200
        # Automatic retention from the pipeline config: the second cut compacts v1's landed batches.
        model = f"model-{stream}"
        cfg = ingestion.runtime.pipelines[model]
        ingestion.runtime.pipelines.put(
            cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"keep_landed_versions": 1})})
        )
        assert ingestion.client.post(f"/v1/streams/{stream}/datasets").status_code == 200
        diff = runner.invoke(app, ["dataset", "diff", stream, "v1", "v2", "--json"])
        assert diff.exit_code == 0, diff.output
        assert (json.loads(diff.output)["rows_added"], json.loads(diff.output)["rows_removed"]) == (4, 0)
        human = runner.invoke(app, ["dataset", "diff", stream])
        assert human.exit_code == 0 and "+4 / -0" in human.output
        show = runner.invoke(app, ["dataset", "show", f"{stream}@v1"])
        assert show.exit_code == 0 and json.loads(show.output)["row_count"] == 6
        sources = json.loads(show.output)["sources"]
        assert len(sources) == 2 and all(s["compacted_into"] for s in sources)  # the request + the replay
        v2_sources = client_json(ingestion, f"/v1/datasets/{stream}@v2")["sources"]
        assert [s["compacted_into"] for s in v2_sources] == [None]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
