"""``kill -9`` of a service at a step of the cascade, then a restart: the step completes with no new cause.

Each service runs as its own process (``python -m driftloop.services.<name>``) on the session's broker and
schema registry; the kill lands at a point the test observes, never after a sleep:

- features, materializing: the materialization's scratch folder exists (Spark is computing the version) and no
  feature set is recorded yet. After the restart: the version materialized once (offline rows, online entities,
  one ``FeaturesMaterialized``), and no Spark JVM of the killed process is left.
- registry, after ``TrainingCompleted``: the version is registered and the gate is reading the challenger's
  artifact (a named pipe the test holds open). After the restart: one version for the run, gated and promoted once.
- serving, during a swap: the champion alias moved to v2 and serving is reading v2's artifact (a named pipe). After
  the restart: it answers with the registry's champion, no request fails once it is ready.
- triggers, after ``DriftDetected``: the decision's transaction waits on a row lock the test holds (PostgreSQL),
  before ``TrainingRequested`` is published. After the restart: exactly one ``TrainingRequested`` for the drift.

Features, registry and triggers are also killed at ``announced``: the step is done and its events are published,
but the cause is not marked handled yet (the mark waits on an uncommitted row the test holds), so the restarted
service gets the cause again: nothing may be announced twice (a re-sent event keeps its id).

(Ingestion, training in a Ray fit and the monitor mid-window have their own crash tests.)
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from subprocess import Popen
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from features_support import dataset_event, raw_rows, write_dataset
from model_factory import (
    feature_frame,
    make_pipeline,
    put_artifact,
    put_feature_set,
    raw_transactions,
    train_artifact,
    training_completed,
    write_pipeline_dir,
)
from monitor_triggers_support import champion_promoted, drift, features_materialized, read_events
from pipeline_support import collect_events, demo_pipeline, write_pipeline

from driftloop.clients.db import create_engine_for, migrate
from driftloop.clients.db.models import FeatureSet, OnlineFeatures, ProcessedEvent, TrainingRequest
from driftloop.clients.objectstore import ObjectStore, open_object_store
from driftloop.contracts import layout
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.settings import Settings, settings_env
from driftloop.contracts.topics import (
    FEATURES_MATERIALIZED,
    MODEL_PROMOTED,
    MODEL_REGISTERED,
    MODEL_REJECTED,
    RETRAIN_DECISION,
    TRAINING_REQUESTED,
)
from driftloop.errors import StackError
from driftloop.ops.procs import free_port, http_ready, pid_alive, spawn, stop_pid, wait_until
from driftloop.runtime import ownedprocs
from driftloop.runtime.bus import EventBus
from driftloop.services.features.service import CONSUMER_GROUP as FEATURES_GROUP
from driftloop.services.registry.service import CONSUMER_GROUP as REGISTRY_GROUP
from driftloop.services.triggers.service import CONSUMER_GROUP as TRIGGERS_GROUP

pytestmark = pytest.mark.integration


# --- the service processes ----------------------------------------------------------------------------------


class Services:
    """The service processes of one test: started, SIGKILLed and, at the end, stopped (by process group, which
    also reaches whatever a killed one left behind)."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.procs: list[Popen[bytes]] = []

    def start(self, name: str, **env: str) -> Popen[bytes]:
        out = self.logs / f"{name}-{sum(1 for p in self.procs if p.args[-1].endswith(name))}.out"
        proc = spawn([sys.executable, "-m", f"driftloop.services.{name}"], out, {**settings_env(self.settings), **env})
        self.procs.append(proc)
        url = self.settings.services.url(name)

        def ready() -> bool:
            assert proc.poll() is None, f"{name} exited: {out.read_text()[-3000:]}"
            return http_ready(f"{url}/healthz")

        wait_until(ready, 180, f"the {name} service to be ready")
        return proc

    @staticmethod
    def kill(proc: Popen[bytes]) -> None:
        """``kill -9`` of the service's process alone (a crash: its children are not told)."""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_pid(proc.pid)


@contextmanager
def services(settings: Settings, logs: Path) -> Iterator[Services]:
    running = Services(settings, logs)
    try:
        yield running
    finally:
        running.stop_all()


# --- a reader blocked on an artifact: a named pipe in the object store -----------------------------------------


@contextmanager
def artifact_held(store: ObjectStore, uri: str) -> Iterator[Callable[[], bool]]:
    """The artifact at ``uri`` becomes a named pipe: whoever reads it blocks. Yields ``reading()``: whether a reader
    has opened it (then the test holds the writing end open, so the reader stays blocked until it is killed). On
    the way out the real bytes are put back."""
    key = store.key_of(uri)
    path = store.local_path(key)
    assert path is not None, "the named pipe needs the local object store"
    data = path.read_bytes()
    path.unlink()
    os.mkfifo(path)
    writer: list[int] = []

    def reading() -> bool:
        if not writer:
            try:
                writer.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader has the pipe open yet
                    raise
        return bool(writer)

    try:
        yield reading
    finally:
        for fd in writer:
            os.close(fd)
        store.put_bytes(key, data)  # replaces the pipe


def registry_versions(registry_url: str, model: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{registry_url}/v1/models/{model}/versions")
    return list(response.json()["versions"]) if response.status_code == 200 else []


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def running_state(pid: int) -> bool:
    """Whether ``pid`` still runs: a zombie has exited (only its parent has not collected it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def survivors(processes: dict[int, int | None]) -> list[str]:
    """The command lines of ``processes`` (pid: start ticks) that still run."""
    return [
        command_line(pid)[:200]
        for pid, ticks in processes.items()
        if ownedprocs.start_ticks(pid) == ticks and running_state(pid)
    ]


def event_ids(events: list[Event]) -> set[str]:
    return {e.id for e in events}


def postgres_schema(postgres_url: str, unique: str) -> str:
    """The URL of a new PostgreSQL schema of the test's own (migrated by the caller)."""
    engine = create_engine_for(postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "s{unique}"')
    engine.dispose()
    return postgres_url + f"?options=-csearch_path%3Ds{unique}"


@contextmanager
def handled_mark_held(engine: sa.Engine, group: str, event_id: str) -> Iterator[None]:
    """The mark "``group`` handled ``event_id``" inserted and not committed while the block runs: the service's own
    mark (made after its handler returned, before the offset is committed) waits for this transaction."""
    with engine.connect() as holder:
        holder.execute(sa.insert(ProcessedEvent).values(consumer=group, event_id=event_id))
        try:
            yield
        finally:
            holder.rollback()


def handled(engine: sa.Engine, group: str, event_id: str) -> bool:
    with engine.connect() as conn:
        found = conn.scalar(
            sa.select(ProcessedEvent.event_id).where(
                ProcessedEvent.consumer == group, ProcessedEvent.event_id == event_id
            )
        )
    return found is not None


def waiting_on(admin: sa.Engine, table: str) -> bool:
    """Whether a session waits for a lock in a statement on ``table`` (another than the one asking)."""
    with admin.connect() as conn:
        waiting = conn.scalar(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query ILIKE :table AND pid <> pg_backend_pid()"
            ),
            {"table": f"%{table}%"},
        )
    return bool(waiting)


# --- features, materializing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["materializing", "announced"])
def test_features_killed_in_a_materialization_materialize_the_version_once_after_a_restart(
    point: str, make_settings: Callable[..., Settings], postgres_url: str, tmp_path: Path, unique: str
) -> None:
    """``materializing``: Spark computes the version (its scratch folder exists), nothing is recorded yet.
    ``announced``: recorded and ``FeaturesMaterialized`` published, but the event is not marked handled (the mark
    waits on a row the test holds): the redelivered event must not announce the version a second time."""
    stream, model = f"tx-{unique}", f"fraud-{unique}"
    pipeline = write_pipeline(tmp_path / "pipelines", model, demo_pipeline(stream, model))
    # No stream records in this test: the streaming worker stays off (one JVM per process is enough here).
    settings = make_settings(
        pipelines_dir=tmp_path / "pipelines",
        database={"url": postgres_schema(postgres_url, unique)},
        services={"features_port": free_port()},
        features={"streaming": False},
    )
    migrate(settings.database_url)
    engine, admin = create_engine_for(settings.database_url), create_engine_for(postgres_url)
    store = open_object_store(settings)
    frame = raw_rows(rows=300, entities=40)
    write_dataset(store, stream, 1, frame)
    cause = dataset_event(stream, 1, frame, store)
    scratch = tmp_path / "scratch-first"
    scratch.mkdir()

    def recorded() -> bool:
        with engine.connect() as conn:
            return conn.scalar(sa.select(FeatureSet.row_count).where(FeatureSet.stream == stream)) is not None

    bus = EventBus(settings, producer_name="test")
    try:
        with services(settings, tmp_path / "logs") as running:
            first = running.start("features", TMPDIR=str(scratch))
            if point == "materializing":
                bus.publish(cause)
                # materialize() makes its scratch folder once the dataset is read, before Spark writes anything.
                wait_until(lambda: any(scratch.glob("driftloop-features-*")), 240, "the materialization", interval=0.05)
                left = {p: ownedprocs.start_ticks(p) for p in ownedprocs.descendants([first.pid]) if p != first.pid}
                running.kill(first)
            else:
                with handled_mark_held(engine, FEATURES_GROUP, cause.id):
                    bus.publish(cause)
                    wait_until(lambda: waiting_on(admin, "processed_events"), 240, "the mark", interval=0.05)
                    left = {p: ownedprocs.start_ticks(p) for p in ownedprocs.descendants([first.pid]) if p != first.pid}
                    running.kill(first)
            assert recorded() == (point == "announced"), "the kill must land at its point"
            assert any("java" in command_line(pid) for pid in left), "the features process had no Spark JVM below it"
            # The JVM sees its Python driver's pipe close and exits: nothing of the killed process stays.
            try:
                wait_until(lambda: not survivors(left), 60, "the killed process's Spark JVM to exit")
            except StackError:
                pytest.fail(f"left behind by the killed features process: {survivors(left)}")

            running.start("features", TMPDIR=str(tmp_path))
            wait_until(lambda: handled(engine, FEATURES_GROUP, cause.id), 240, "the version to be materialized again")
            materialized = collect_events(
                bus,
                FEATURES_MATERIALIZED.name,
                lambda e: e.payload.dataset_version_id == f"{stream}@v1",
                1,
                timeout=60,
                linger=3,
            )
        with engine.connect() as conn:
            feature_sets = conn.scalar(sa.select(sa.func.count()).where(FeatureSet.stream == stream))
            online = conn.scalar(sa.select(sa.func.count()).where(OnlineFeatures.stream == stream))
    finally:
        bus.close()
        engine.dispose()
        admin.dispose()
    # Once: one announcement (a redelivery sends it again with the same id: consumers handle it once).
    assert len(event_ids(materialized)) == 1, [e.id for e in materialized]
    assert materialized[0].envelope.caused_by == cause.id and materialized[0].payload.row_count == len(frame)
    assert materialized[0].payload.online_entities == 40
    assert (feature_sets, online) == (1, 40)
    offline = pq.read_table(store.local_path(layout.feature_set_prefix(stream, 1))).to_pandas()
    assert len(offline) == len(frame) and list(offline.columns)[:2] == ["customer_id", "event_time"]
    assert set(offline["customer_id"]) == set(frame["customer_id"]) and pipeline.feature_names[0] in offline


# --- registry, after TrainingCompleted -------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["gating", "announced"])
def test_registry_killed_after_training_completed_gates_the_version_once_after_a_restart(
    point: str, make_settings: Callable[..., Settings], postgres_url: str, tmp_path: Path, unique: str
) -> None:
    """``gating``: the version is registered (and announced) and the gate reads the challenger's artifact.
    ``announced``: gated, promoted and announced, but ``TrainingCompleted`` is not marked handled yet."""
    model, stream = f"fraud-{unique}", f"tx-{unique}"
    pipelines = write_pipeline_dir(tmp_path / "pipelines", model, stream, first_version_threshold=0.6)
    # The training service is not running: the registry's lineage question about the run is refused at once.
    settings = make_settings(
        pipelines_dir=pipelines,
        database={"url": postgres_schema(postgres_url, unique)},
        services={"registry_port": free_port(), "training_port": free_port()},
    )
    migrate(settings.database_url)
    engine, admin = create_engine_for(settings.database_url), create_engine_for(postgres_url)
    pipeline = make_pipeline(model=model, stream=stream)
    store = open_object_store(settings)
    features = feature_frame(pipeline, rows=2000)
    feature_set_uri = put_feature_set(store, stream, 1, features)
    uri, sha = put_artifact(store, model, "run-1", train_artifact(pipeline, features))
    registry_url = settings.services.url("registry")
    completed = new_event(
        training_completed(model, "run-1", uri, sha, feature_set_uri, f"{stream}@v1"), producer="test-training"
    )

    def statuses() -> list[tuple[int, str]]:
        return [(v["version"], v["status"]) for v in registry_versions(registry_url, model)]

    bus = EventBus(settings, producer_name="test")
    try:
        with services(settings, tmp_path / "logs") as running:
            first = running.start("registry")
            if point == "gating":
                with artifact_held(store, uri) as gate_reading:
                    bus.publish(completed)
                    wait_until(gate_reading, 120, "the registry's gate to read the challenger", interval=0.05)
                    assert statuses() == [(1, "registered")]  # registered, not gated: the kill lands between
                    running.kill(first)
            else:
                with handled_mark_held(engine, REGISTRY_GROUP, completed.id):
                    bus.publish(completed)
                    wait_until(lambda: waiting_on(admin, "processed_events"), 120, "the mark", interval=0.05)
                    assert statuses() == [(1, "promoted")]
                    running.kill(first)

            running.start("registry")
            wait_until(lambda: handled(engine, REGISTRY_GROUP, completed.id), 120, "TrainingCompleted to be handled")
            versions = registry_versions(registry_url, model)
            champion = httpx.get(f"{registry_url}/v1/models/{model}/aliases/champion").json()
            registered = read_events(settings, bus, MODEL_REGISTERED, model)
            promoted = read_events(settings, bus, MODEL_PROMOTED, model)
            rejected = read_events(settings, bus, MODEL_REJECTED, model)
    finally:
        bus.close()
        engine.dispose()
        admin.dispose()
    assert [(v["version"], v["status"], v["run_id"]) for v in versions] == [(1, "promoted", "run-1")]
    assert champion["version"] == 1
    # Sent again after the restart with the ids they were stored with: one registration, one promotion.
    assert len(event_ids(registered)) == 1 and len(event_ids(promoted)) == 1 and rejected == []
    assert promoted[0].envelope.caused_by == completed.id


# --- serving, during a swap ------------------------------------------------------------------------------------


def test_serving_killed_while_swapping_serves_the_registry_champion_after_a_restart(
    make_settings: Callable[..., Settings], tmp_path: Path, unique: str
) -> None:
    model, stream = f"fraud-{unique}", f"tx-{unique}"
    # v1 passes the first-version threshold; v2 (shuffled labels) cannot beat it by 0.3 and is rejected.
    pipelines = write_pipeline_dir(
        tmp_path / "pipelines", model, stream, first_version_threshold=0.6, min_improvement=0.3
    )
    settings = make_settings(
        pipelines_dir=pipelines,
        services={"registry_port": free_port(), "serving_port": free_port(), "training_port": free_port()},
    )
    migrate(settings.database_url)
    pipeline = make_pipeline(model=model, stream=stream)
    store = open_object_store(settings)
    features = feature_frame(pipeline, rows=2000)
    feature_set_uri = put_feature_set(store, stream, 1, features)
    registry_url, serving_url = settings.services.url("registry"), settings.services.url("serving")
    raw = raw_transactions(3, seed=3).drop(columns=["is_fraud"])
    raw["event_time"] = raw["event_time"].astype(str)
    instances = {"instances": raw.to_dict("records")}

    def served_version() -> int | None:
        response = httpx.get(f"{serving_url}/v1/models/{model}")
        return int(response.json()["version"]) if response.status_code == 200 else None

    bus = EventBus(settings, producer_name="test")
    try:
        with services(settings, tmp_path / "logs") as running:
            running.start("registry")
            first = running.start("serving")
            shas = {}
            for version, run_id, quality in ((1, "run-1", "good"), (2, "run-2", "bad")):
                uri, shas[version] = put_artifact(
                    store, model, run_id, train_artifact(pipeline, features, quality=quality)
                )
                payload = training_completed(model, run_id, uri, shas[version], feature_set_uri, f"{stream}@v1")
                bus.publish(new_event(payload, producer="test-training"))
                wait_until(
                    lambda v=version: (
                        len(registry_versions(registry_url, model)) == v
                        and registry_versions(registry_url, model)[-1]["status"] != "registered"
                    ),
                    120,
                    f"v{version} to be gated",
                )
            assert [v["status"] for v in registry_versions(registry_url, model)] == ["promoted", "rejected"]
            wait_until(lambda: served_version() == 1, 120, "serving v1")

            # A person makes v2 the champion; serving starts the swap and blocks reading v2's artifact.
            with artifact_held(store, registry_versions(registry_url, model)[1]["artifact_uri"]) as loading:
                move = {"version": 2, "reason": "crash test: swap to v2"}
                response = httpx.put(f"{registry_url}/v1/models/{model}/aliases/champion", json=move)
                assert response.status_code == 200, response.text
                wait_until(loading, 60, "serving to load v2", interval=0.05)
                assert served_version() == 1  # mid-swap: v1 still answers
                running.kill(first)

            running.start("serving")  # ready: the registry's champions are loaded
            answers = [
                httpx.post(f"{serving_url}/v1/models/{model}/predict", json=instances, timeout=30) for _ in range(20)
            ]
            champion = httpx.get(f"{registry_url}/v1/models/{model}/aliases/champion").json()["version"]
            info = httpx.get(f"{serving_url}/v1/models/{model}").json()
    finally:
        bus.close()
    assert champion == 2
    assert [r.status_code for r in answers] == [200] * 20, [r.text for r in answers if r.status_code != 200][:1]
    assert {r.json()["version"] for r in answers} == {2}
    assert (info["version"], info["sha256"]) == (2, shas[2])


# --- triggers, after DriftDetected -----------------------------------------------------------------------------

DRIFT_RETRAINS = {
    "new_data": {"enabled": True, "only_without_champion": True},
    "drift": {"enabled": True, "wait_for_fresh_data": False},
    "policy": {"retrain_on": ["drift", "performance"]},
    "cooldown_seconds": 300,
    "queue_while_running": False,
}


@pytest.mark.parametrize("point", ["deciding", "announced"])
def test_triggers_killed_after_a_drift_request_training_once_after_a_restart(
    point: str, make_settings: Callable[..., Settings], postgres_url: str, tmp_path: Path, unique: str
) -> None:
    """``deciding``: the drift's decision waits inside its transaction (on the model's state row, locked here)
    before ``TrainingRequested`` is published. ``announced``: decided, committed and published, but the drift is
    not marked handled yet."""
    stream, model = f"tx-{unique}", f"fraud-{unique}"
    cfg = write_pipeline(tmp_path / "pipelines", model, demo_pipeline(stream, model, triggers=DRIFT_RETRAINS))
    # The registry and training are not running: the start-up reconciliation and the outbox find nothing.
    settings = make_settings(
        pipelines_dir=tmp_path / "pipelines",
        database={"url": postgres_schema(postgres_url, unique)},
        services={"triggers_port": free_port(), "registry_port": free_port(), "training_port": free_port()},
    )
    migrate(settings.database_url)
    engine, admin = create_engine_for(settings.database_url), create_engine_for(postgres_url)
    url = settings.services.url("triggers")

    def state() -> dict[str, Any]:
        return dict(httpx.get(f"{url}/v1/models/{model}/trigger-state").json())

    def decisions() -> list[tuple[str, str | None]]:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(TrainingRequest.status, TrainingRequest.event_id).where(
                    TrainingRequest.cause_event_id == cause.id
                )
            )
            return [(r.status, r.event_id) for r in rows]

    cause = drift(cfg, 0)
    bus = EventBus(settings, producer_name="test")
    try:
        with services(settings, tmp_path / "logs") as running:
            first = running.start("triggers")
            bus.publish(champion_promoted(cfg, 1))
            wait_until(lambda: state()["champion_version"] == 1, 60, "the champion to be known")
            bus.publish(features_materialized(cfg, 1))
            wait_until(lambda: state()["latest_dataset_version_id"] == f"{stream}@v1", 60, "the data version")

            if point == "deciding":
                with engine.connect() as holder:
                    # The model's state row locked: the decision (it moves the cooldown clock) waits inside its
                    # transaction, before the request is published.
                    holder.execute(
                        sa.text("SELECT model FROM trigger_model_state WHERE model = :m FOR UPDATE"), {"m": model}
                    )
                    bus.publish(cause)
                    wait_until(
                        lambda: waiting_on(admin, "trigger_model_state"), 60, "the decision to wait", interval=0.05
                    )
                    running.kill(first)
                    holder.rollback()
                assert decisions() == []  # nothing of the decision was kept
            else:
                with handled_mark_held(engine, TRIGGERS_GROUP, cause.id):
                    bus.publish(cause)
                    wait_until(lambda: waiting_on(admin, "processed_events"), 60, "the mark", interval=0.05)
                    assert [status for status, _ in decisions()] == ["requested"]
                    running.kill(first)

            running.start("triggers")
            wait_until(lambda: handled(engine, TRIGGERS_GROUP, cause.id), 60, "the drift to be handled")
            requested = read_events(settings, bus, TRAINING_REQUESTED, model)
            decided = [
                e for e in read_events(settings, bus, RETRAIN_DECISION, model) if e.envelope.caused_by == cause.id
            ]
    finally:
        bus.close()
        engine.dispose()
        admin.dispose()
    [(status, event_id)] = decisions()
    assert status == "requested"
    assert [(e.envelope.caused_by, e.id) for e in requested] == [(cause.id, event_id)]
    assert requested[0].payload.trigger == "drift"
    # The decision redone after the kill is the same event (one id; the timeline shows it once).
    assert decided and len({e.id for e in decided}) == 1 and decided[0].payload.decision == "retrain"
    assert not any(pid_alive(p.pid) for p in running.procs)
