"""What a training request trains on, decided when its run starts, without Kafka or Ray: SQLite, a local object
store, the fit in this process, published events collected.

- the newest usable dataset version (not the one named when the request was made), a pin kept;
- a request on exactly the data and configuration of an earlier run is skipped, with its reason and an event;
- a run interrupted by a crash is executed again once at the next start (one run, one completion per request);
- a change point: the fit keeps the rows after it (or down-weights the older ones).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from fit_support import pipeline, write_feature_set

from driftloop.clients.db import create_engine_for, migrate, session_factory
from driftloop.clients.db.models import ModelVersion, Run
from driftloop.clients.objectstore import LocalObjectStore
from driftloop.contracts import layout
from driftloop.contracts.evaluation import SAMPLE_WEIGHT_COLUMN
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import FeaturesMaterialized, RunStateChanged, TrainingCompleted, TrainingRequested
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.contracts.settings import ObjectStoreSettings, Settings
from driftloop.errors import NotFoundError
from driftloop.services.training.featuresets import resolve_for_request
from driftloop.services.training.fit import FitJob, FitResult, change_window_weights, fit_feature_set, prepare_data
from driftloop.services.training.handlers import TrainingHandlers
from driftloop.services.training.runs import training_fingerprint

STREAM, MODEL = "tx-unit", "fraud-unit"


@dataclass
class FakeBus:
    published: list[Event] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def publish(self, event: Event, **_: Any) -> None:
        self.published.append(event)


@dataclass
class FakeRuntime:
    settings: Settings
    pipelines: dict[str, PipelineConfig]
    bus: FakeBus
    Session: Any
    name: str = "training"


class Crash(BaseException):
    """Stands for a kill -9 inside the fit: nothing after it runs (not an Exception: no handler catches it)."""


@pytest.fixture
def runtime(tmp_path: Path) -> FakeRuntime:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    settings = Settings(home=tmp_path / "home", object_store={"type": "local", "path": tmp_path / "objects"})
    return FakeRuntime(settings, {MODEL: pipeline()}, FakeBus(), session_factory(create_engine_for(url)))


def local_fit(settings: Settings, job: FitJob, should_abort: Any) -> FitResult:
    return fit_feature_set(job)


def handlers(runtime: FakeRuntime, fitter: Any = local_fit) -> TrainingHandlers:
    return TrainingHandlers(runtime, store=LocalObjectStore(runtime.settings.object_store_path), fitter=fitter)  # type: ignore[arg-type]


def request(request_id: str, version: str | None, **fields: Any) -> Event[TrainingRequested]:
    trigger = fields.pop("trigger", "new_data")
    payload = TrainingRequested(
        request_id=request_id, model=MODEL, trigger=trigger, reason="test", dataset_version_id=version, **fields
    )
    return new_event(payload, producer="test")


def run_of(runtime: FakeRuntime, request_id: str) -> Run:
    with runtime.Session() as session:
        runs = session.scalars(sa.select(Run).where(Run.request_id == request_id)).all()
    assert len(runs) == 1
    return runs[0]


def states(runtime: FakeRuntime, run_id: str) -> list[str]:
    return [
        e.payload.state
        for e in runtime.bus.published
        if isinstance(e.payload, RunStateChanged) and e.payload.run_id == run_id
    ]


def completions(runtime: FakeRuntime, request_id: str) -> list[TrainingCompleted]:
    return [
        e.payload
        for e in runtime.bus.published
        if isinstance(e.payload, TrainingCompleted) and e.payload.request_id == request_id
    ]


@dataclass
class CutAsks:
    """What training asked ingestion's cut on demand (``POST /v1/streams/{s}/datasets``), in order."""

    asks: list[dict[str, Any]] = field(default_factory=list)
    asked: threading.Event = field(default_factory=threading.Event)


def answer_cuts(monkeypatch: pytest.MonkeyPatch, answer: Callable[[CutAsks], dict[str, Any]]) -> CutAsks:
    """Ingestion stood in for: each ask is recorded, then answered by ``answer`` (which may raise)."""
    import driftloop.services.training.handlers as training_handlers

    cuts = CutAsks()

    class Ingestion:
        def __init__(self, *_: Any, **__: Any) -> None: ...
        def __enter__(self) -> Ingestion:
            return self

        def __exit__(self, *_: Any) -> None: ...
        def post(self, path: str, json: dict[str, Any]) -> dict[str, Any]:
            cuts.asks.append(json)
            cuts.asked.set()
            return answer(cuts)

    monkeypatch.setattr(training_handlers, "ServiceClient", Ingestion)
    return cuts


def features_materialized(
    store: LocalObjectStore, cfg: PipelineConfig, version: int, rows: int
) -> Event[FeaturesMaterialized]:
    materialized = FeaturesMaterialized(
        stream=cfg.stream.name,
        dataset_version_id=f"{cfg.stream.name}@v{version}",
        feature_set_uri=store.uri(layout.feature_set_prefix(cfg.stream.name, version)),
        feature_names=cfg.feature_names,
        row_count=rows,
        online_entities=50,
    )
    return new_event(materialized, producer="test")


def test_the_version_is_resolved_at_run_start_and_a_pin_is_kept(tmp_path: Path) -> None:
    cfg, store = pipeline(), LocalObjectStore(tmp_path)
    write_feature_set(store, cfg, 1, 60)
    write_feature_set(store, cfg, 2, 60)
    named_v1 = request("r1", f"{STREAM}@v1").payload
    assert resolve_for_request(store, cfg, named_v1).dataset_version_id == f"{STREAM}@v2"  # the stale bootstrap
    pinned = replace(named_v1, pinned=True)
    assert resolve_for_request(store, cfg, pinned).dataset_version_id == f"{STREAM}@v1"
    rerun = replace(named_v1, rerun_of="run-x")
    assert resolve_for_request(store, cfg, rerun).dataset_version_id == f"{STREAM}@v1"
    assert resolve_for_request(store, cfg, request("r2", None).payload).dataset_version_id == f"{STREAM}@v2"
    # Named a version newer than anything materialized: never an older one, the error names it.
    with pytest.raises(NotFoundError, match=f"{STREAM}@v7"):
        resolve_for_request(store, cfg, request("r3", f"{STREAM}@v7").payload)


def test_a_request_on_identical_data_and_config_is_skipped_with_its_reason(runtime: FakeRuntime) -> None:
    store = LocalObjectStore(runtime.settings.object_store_path)
    cfg = runtime.pipelines[MODEL]
    write_feature_set(store, cfg, 1, 600)
    write_feature_set(store, cfg, 2, 600)
    training = handlers(runtime)

    training.on_training_requested(request("first", f"{STREAM}@v1"))
    first = run_of(runtime, "first")
    assert first.state == "completed" and first.dataset_version_id == f"{STREAM}@v2" and first.fingerprint

    # A performance alarm right after: the same data, the same configuration -> nothing new to learn.
    training.on_training_requested(request("again", f"{STREAM}@v2", trigger="performance"))
    again = run_of(runtime, "again")
    assert again.state == "skipped" and first.run_id in (again.skip_reason or "")
    assert again.fingerprint == first.fingerprint and again.artifact_uri is None
    assert states(runtime, again.run_id) == ["pending", "skipped"]
    skipped_event = [e for e in runtime.bus.published if isinstance(e.payload, RunStateChanged)][-1]
    assert skipped_event.payload.state == "skipped" and first.run_id in (skipped_event.payload.message or "")
    assert completions(runtime, "again") == []

    # A person asking for it gets it (the gate then judges the identical challenger).
    training.on_training_requested(request("person", f"{STREAM}@v2", trigger="manual"))
    assert run_of(runtime, "person").state == "completed"

    # New data is new information: trained.
    write_feature_set(store, cfg, 3, 600)
    training.on_training_requested(request("fresh", f"{STREAM}@v2", trigger="drift"))
    fresh = run_of(runtime, "fresh")
    assert fresh.state == "completed" and fresh.dataset_version_id == f"{STREAM}@v3"

    # A rerun reproduces on purpose: never skipped.
    training.on_training_requested(
        request("rerun", fresh.dataset_version_id, trigger="rerun", rerun_of=fresh.run_id, pinned=True)
    )
    assert run_of(runtime, "rerun").state == "completed"


def test_the_fingerprint_changes_with_data_config_window_and_labels() -> None:
    cfg = pipeline()
    base = training_fingerprint(cfg, f"{STREAM}@v1", None, None)
    assert base == training_fingerprint(pipeline(), f"{STREAM}@v1", None, None)
    since = datetime(2026, 2, 1, 12, tzinfo=UTC)
    other_params = cfg.model_copy(update={"model": cfg.model.model_copy(update={"params": {"num_leaves": 7}})})
    assert (
        len(
            {
                base,
                training_fingerprint(cfg, f"{STREAM}@v2", None, None),
                training_fingerprint(other_params, f"{STREAM}@v1", None, None),
                training_fingerprint(cfg, f"{STREAM}@v1", since, None),
                training_fingerprint(cfg, f"{STREAM}@v1", None, "labels-a"),
                training_fingerprint(cfg, f"{STREAM}@v1", None, "labels-b"),
            }
        )
        == 6
    )


def test_a_run_interrupted_by_a_crash_runs_again_once_at_the_next_start(runtime: FakeRuntime) -> None:
    store = LocalObjectStore(runtime.settings.object_store_path)
    write_feature_set(store, runtime.pipelines[MODEL], 1, 600)

    def crashing_fit(settings: Settings, job: FitJob, should_abort: Any) -> FitResult:
        raise Crash

    event = request("crashed", None)
    with pytest.raises(Crash):
        handlers(runtime, crashing_fit).on_training_requested(event)
    assert run_of(runtime, "crashed").state == "running"

    # The next start: the run goes back to pending and is executed again; the redelivered request adds nothing.
    restarted = handlers(runtime)
    [run_id] = restarted.take_interrupted()
    restarted.on_training_requested(event)
    restarted.resume_interrupted(threading.Event())
    run = run_of(runtime, "crashed")
    assert run.run_id == run_id and run.state == "completed" and run.attempts == 2
    assert states(runtime, run_id) == ["pending", "running", "pending", "running", "completed"]
    [completed] = completions(runtime, "crashed")
    assert completed.run_id == run_id
    # The completion keeps the lineage of the original request.
    [done] = [e for e in runtime.bus.published if isinstance(e.payload, TrainingCompleted)]
    assert done.envelope.cascade_id == event.envelope.cascade_id and done.envelope.caused_by == event.id

    # Interrupted twice: failed, not executed a third time.
    event2 = request("crashed-twice", None, trigger="manual")
    with runtime.Session.begin() as session:
        session.add(
            Run(
                run_id="run-twice",
                request_id="crashed-twice",
                model=MODEL,
                state="running",
                trigger="manual",
                cause_event_id=event2.id,
                cascade_id=event2.envelope.cascade_id,
                attempts=2,
                request={"trigger": "manual", "reason": "test"},
            )
        )
    assert handlers(runtime).take_interrupted() == []
    failed = run_of(runtime, "crashed-twice")
    assert failed.state == "failed" and "interrupted" in (failed.error or "")


def test_a_change_window_trains_on_post_change_rows_or_down_weights_the_older(tmp_path: Path) -> None:
    cfg, store = pipeline(), LocalObjectStore(tmp_path)
    write_feature_set(store, cfg, 1, 1200)  # one row a minute from 2026-02-01
    prefix = layout.feature_set_prefix(STREAM, 1)
    since = datetime(2026, 2, 1, tzinfo=UTC) + timedelta(minutes=400)
    job = FitJob(
        "run-w",
        cfg,
        ObjectStoreSettings(type="local", path=tmp_path),
        prefix,
        store.uri(prefix),
        f"{STREAM}@v1",
        train_since=since,
        training_set_key="models/x/run-w/training_set.parquet",
    )
    dropped = fit_feature_set(job)
    assert dropped.train_rows + dropped.holdout["rows"] == 800
    trained_on = pd.read_parquet(store.local_path("models/x/run-w/training_set.parquet"))
    assert len(trained_on) == 800 and pd.to_datetime(trained_on["event_time"], utc=True).min() >= since

    weighted = fit_feature_set(replace(job, pre_change_weight=0.2, run_id="run-w2"))
    assert weighted.train_rows + weighted.holdout["rows"] == 1200

    # The rows after the change weigh more the newer they are; the older rows keep their flat weight.
    notes: list[str] = []
    ramped = prepare_data(replace(job, pre_change_weight=0.2, post_change_oldest_weight=0.25), notes.append)
    assert ramped.w_train is not None
    times = pd.to_datetime(ramped.train["event_time"], utc=True)
    before, after = ramped.w_train[(times < since).to_numpy()], ramped.w_train[(times >= since).to_numpy()]
    assert set(before.tolist()) == {0.2}
    assert 0.25 <= after.min() < 0.26 and after.max() > 0.99
    by_time = pd.Series(after, index=times[times >= since].to_numpy()).sort_index().to_numpy()
    assert (by_time[1:] > by_time[:-1]).all()
    assert any("weigh from 0.25" in n for n in notes)
    ramped_fit = fit_feature_set(replace(job, post_change_oldest_weight=0.25, run_id="run-w3"))
    assert ramped_fit.train_rows == dropped.train_rows
    # The training set the gate reads carries the weights, and the run scored its holdout with them.
    assert ramped_fit.holdout["sample_weight_column"] == SAMPLE_WEIGHT_COLUMN
    stored = pd.read_parquet(store.local_path("models/x/run-w/training_set.parquet"))
    assert stored[SAMPLE_WEIGHT_COLUMN].between(0.25, 1.0).all() and stored[SAMPLE_WEIGHT_COLUMN].max() > 0.99
    assert "sample_weight_column" not in dropped.holdout


def test_change_window_weights_ramp_from_the_change_to_the_newest_row() -> None:
    since = pd.Timestamp("2026-02-01T00:00:00Z")
    times = pd.Series(since + pd.to_timedelta([-60, 0, 30, 60], unit="s"))
    assert change_window_weights(times, since, 0.5, 0.2).tolist() == pytest.approx([0.5, 0.2, 0.6, 1.0])
    assert change_window_weights(times, since, 0.5, 1.0).tolist() == [0.5, 1.0, 1.0, 1.0]
    assert change_window_weights(times[1:], since, 0.0, 1.0) is None  # all after the change, all alike
    assert change_window_weights(times[1:2], since, 0.0, 0.2).tolist() == [1.0]  # one instant: nothing to ramp


def test_a_request_with_a_change_point_trains_on_the_rows_after_it(runtime: FakeRuntime) -> None:
    store = LocalObjectStore(runtime.settings.object_store_path)
    cfg = runtime.pipelines[MODEL]
    write_feature_set(store, cfg, 1, 1200)  # one row a minute from 2026-02-01
    change = datetime(2026, 2, 1, tzinfo=UTC) + timedelta(minutes=1200 - 600)
    training = handlers(runtime)
    training.on_training_requested(request("after-change", None, trigger="drift", change_started_at=change))
    run = run_of(runtime, "after-change")
    assert run.state == "completed", run.error
    assert run.holdout["rows"] + run.holdout["train_rows"] == 600  # only the rows after the change
    [completed] = completions(runtime, "after-change")
    # The gate scores the rows the model was trained and scored on.
    assert completed.feature_set_uri.endswith(f"{run.run_id}/training_set.parquet")
    assert len(pd.read_parquet(store.local_path(store.key_of(completed.feature_set_uri)))) == 600

    # Too few rows after a later change and no time to wait (e.g. the stream's event times are on another clock
    # than the predictions the change was seen in): the run trains on all of the newest feature set and says why.
    short = {**runtime.pipelines}
    short[MODEL] = cfg.model_copy(update={"model": cfg.model.model_copy(update={"change_wait_seconds": 0})})
    runtime.pipelines.update(short)
    late = change + timedelta(minutes=590)  # 10 rows after it; dataset.min_rows_after_change is 500
    training.on_training_requested(request("late-change", None, trigger="drift", change_started_at=late))
    late_run = run_of(runtime, "late-change")
    assert late_run.state == "completed", late_run.error
    assert late_run.holdout["rows"] + late_run.holdout["train_rows"] == 1200  # every row, none dropped


def test_a_change_seen_on_the_platforms_clock_is_placed_by_ingestion_in_the_streams_event_time(
    runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change comes from the monitor (prediction times: now); the feature set's event times are months
    earlier. Training asks ingestion (clock "arrival") and trains on the rows after the event time it answers."""

    store = LocalObjectStore(runtime.settings.object_store_path)
    write_feature_set(store, runtime.pipelines[MODEL], 1, 1200)  # one row a minute from 2026-02-01
    in_event_time = datetime(2026, 2, 1, tzinfo=UTC) + timedelta(minutes=600)
    cuts = answer_cuts(
        monkeypatch, lambda _: {"status": "covered", "since": in_event_time.isoformat(), "rows_after_change": 600}
    )
    now = datetime.now(tz=UTC)
    handlers(runtime).on_training_requested(request("clocks", None, trigger="drift", change_started_at=now))
    run = run_of(runtime, "clocks")
    assert run.state == "completed", run.error
    asked = cuts.asks
    assert asked and asked[0]["clock"] == "arrival" and datetime.fromisoformat(asked[0]["since"]) == now
    assert run.holdout["rows"] + run.holdout["train_rows"] == 600  # the rows after the change, in event time


def test_a_followup_of_a_change_waits_for_its_rows_to_grow_by_followup_growth(runtime: FakeRuntime) -> None:
    store = LocalObjectStore(runtime.settings.object_store_path)
    cfg = runtime.pipelines[MODEL]
    assert cfg.triggers.after_change.followup_growth == 1.5
    write_feature_set(store, cfg, 1, 1200)  # one row a minute from 2026-02-01
    change = datetime(2026, 2, 1, tzinfo=UTC) + timedelta(minutes=1200 - 600)
    training = handlers(runtime)
    first = request("change-first", None, trigger="performance", change_started_at=change)
    training.on_training_requested(first)
    assert run_of(runtime, "change-first").holdout["rows_after_change"] == 600

    def registered(request_id: str, version: int, status: str) -> None:  # what the registry's gate decided
        run = run_of(runtime, request_id)
        with runtime.Session.begin() as session:
            session.add(
                ModelVersion(
                    model=MODEL,
                    version=version,
                    run_id=run.run_id,
                    artifact_uri="file:///a",
                    artifact_sha256="0" * 64,
                    dataset_version_id=run.dataset_version_id or "",
                    feature_set_uri="file:///f",
                    status=status,
                )
            )

    def followup(request_id: str) -> Event[TrainingRequested]:
        payload = TrainingRequested(
            request_id=request_id, model=MODEL, trigger="followup", reason="test", change_started_at=change
        )
        return new_event(payload, producer="test", cause=first)  # the change's cascade

    def log_of(run: Run) -> str:
        assert run.log_uri is not None
        return store.get_bytes(store.key_of(run.log_uri)).decode()

    # The gate rejected its model (the old champion serves on): a follow-up answering that champion goes at once.
    write_feature_set(store, cfg, 2, 1300)
    registered("change-first", 2, "rejected")
    training.on_training_requested(followup("followup-0"))
    at_once = run_of(runtime, "followup-0")
    assert at_once.state == "completed", at_once.error
    assert at_once.holdout["rows_after_change"] == 700
    assert "waiting for 500 rows after it (dataset.min_rows_after_change)" in log_of(at_once)

    # Its model was promoted and is weak: 800 rows after the change are too few for the next follow-up (1.5 x 700);
    # with no time to wait it trains on them.
    registered("followup-0", 3, "promoted")
    write_feature_set(store, cfg, 3, 1400)
    short = cfg.model_copy(update={"model": cfg.model.model_copy(update={"change_wait_seconds": 0})})
    runtime.pipelines[MODEL] = short
    training.on_training_requested(followup("followup-1"))
    hurried = run_of(runtime, "followup-1")
    assert hurried.state == "completed", hurried.error
    assert hurried.holdout["rows_after_change"] == 800
    assert "(promoted) trained on 700 rows after it; waiting for 1050" in log_of(hurried)
    assert "800 rows at or after the change; not the 1050 waited for" in log_of(hurried)

    # Grown to 1.5 x 800: the next follow-up trains at once, on the grown window.
    registered("followup-1", 4, "promoted")
    write_feature_set(store, cfg, 4, 1800)
    runtime.pipelines[MODEL] = cfg
    training.on_training_requested(followup("followup-2"))
    grown = run_of(runtime, "followup-2")
    assert grown.state == "completed", grown.error
    assert grown.holdout["rows_after_change"] == 1200
    assert "waiting for 1200" in log_of(grown) and "waited for" not in log_of(grown)

    # Another change (another cascade) and a first request are not follow-ups: the configured minimum only.
    other = request("another-change", None, trigger="drift", change_started_at=change + timedelta(minutes=100))
    training.on_training_requested(other)
    assert "waiting for 500 rows after it (dataset.min_rows_after_change)" in log_of(run_of(runtime, "another-change"))


def test_a_fit_broken_by_the_services_own_stop_is_interrupted_not_failed(runtime: FakeRuntime) -> None:
    write_feature_set(LocalObjectStore(runtime.settings.object_store_path), runtime.pipelines[MODEL], 1, 600)
    stop = runtime.bus.stop_event

    def fit_while_stopping(settings: Settings, job: FitJob, should_abort: Any) -> FitResult:
        stop.set()  # SIGTERM arrived; Ray is shut down under the fit
        raise RuntimeError("Ray has been shut down")

    handlers(runtime, fit_while_stopping).on_training_requested(request("stopped", None))
    assert run_of(runtime, "stopped").state == "running"
    assert handlers(runtime).take_interrupted() == [run_of(runtime, "stopped").run_id]


def test_a_cut_on_demand_answered_too_late_is_asked_again_not_guessed(
    runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingestion busy with a Spark cut answers the first ask after the client's timeout: the change (on the
    platform's clock) is not taken as an event time; training asks again and trains on the rows after the answer."""
    import driftloop.services.training.handlers as training_handlers
    from driftloop.errors import ServiceError

    monkeypatch.setattr(training_handlers, "CHANGE_ASK_AGAIN_SECONDS", 0.01)
    store = LocalObjectStore(runtime.settings.object_store_path)
    write_feature_set(store, runtime.pipelines[MODEL], 1, 1200)  # one row a minute from 2026-02-01
    in_event_time = datetime(2026, 2, 1, tzinfo=UTC) + timedelta(minutes=700)

    def busy_then_answer(cuts: CutAsks) -> dict[str, Any]:
        if len(cuts.asks) == 1:
            raise ServiceError("ingestion did not answer in time", status_code=504, code="timeout")
        return {"status": "covered", "since": in_event_time.isoformat(), "rows_after_change": 500}

    cuts = answer_cuts(monkeypatch, busy_then_answer)
    handlers(runtime).on_training_requested(
        request("busy", None, trigger="drift", change_started_at=datetime.now(tz=UTC))
    )
    run = run_of(runtime, "busy")
    assert run.state == "completed", run.error
    assert len(cuts.asks) == 2
    assert run.holdout["rows"] + run.holdout["train_rows"] == 500  # the rows after the answered event time


def test_a_run_waiting_for_rows_after_a_change_wakes_on_the_streams_features_materialized(
    runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The newest feature set has 200 rows after the change, 500 are needed: the run waits. Ingestion's next version
    is materialized and its FeaturesMaterialized read: the run trains on it at once, not at the next slow poll."""
    import driftloop.services.training.handlers as training_handlers

    monkeypatch.setattr(training_handlers, "CHANGE_POLL_SECONDS", 3600.0)  # only the event can end the wait
    store = LocalObjectStore(runtime.settings.object_store_path)
    cfg = runtime.pipelines[MODEL]
    write_feature_set(store, cfg, 1, 1200)  # one row a minute from 2026-02-01
    change = datetime(2026, 2, 1, tzinfo=UTC) + timedelta(minutes=1000)
    answer = {"status": "waiting", "since": change.isoformat(), "rows_after_change": 200}
    cuts = answer_cuts(monkeypatch, lambda _: answer)
    training = handlers(runtime)
    waiting = threading.Thread(
        target=training.on_training_requested,
        args=(request("woken", None, trigger="drift", change_started_at=change),),
        daemon=True,
    )
    waiting.start()
    assert cuts.asked.wait(60), "the run never asked ingestion for a cut after the change"
    write_feature_set(store, cfg, 2, 1600)  # 600 rows after the change
    training.on_features_materialized(features_materialized(store, cfg, 2, 1600))
    waiting.join(60)
    assert not waiting.is_alive(), "the run did not wake on FeaturesMaterialized"
    run = run_of(runtime, "woken")
    assert run.state == "completed", run.error
    assert run.dataset_version_id == f"{STREAM}@v2"
    assert run.holdout["rows"] + run.holdout["train_rows"] == 600


def test_a_run_trains_on_the_version_cut_for_it_not_an_older_one_with_enough_rows(
    runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follow-up brought forward right after the previous run: v1 already holds enough rows after the change (the
    previous run trained on them), and ingestion cuts v2 for this run. The run waits for v2's feature set: on v1 it
    would learn nothing new (and be skipped as identical)."""
    import driftloop.services.training.handlers as training_handlers

    monkeypatch.setattr(training_handlers, "CHANGE_POLL_SECONDS", 3600.0)
    store = LocalObjectStore(runtime.settings.object_store_path)
    cfg = runtime.pipelines[MODEL]
    write_feature_set(store, cfg, 1, 1200)  # one row a minute from 2026-02-01
    change = datetime(2026, 2, 1, tzinfo=UTC) + timedelta(minutes=600)  # 600 rows after it in v1
    answer = {"status": "cut", "since": change.isoformat(), "rows_after_change": 800, "version": {"version": 2}}
    cuts = answer_cuts(monkeypatch, lambda _: answer)
    training = handlers(runtime)
    waiting = threading.Thread(
        target=training.on_training_requested,
        args=(request("cut-for-me", None, trigger="followup", change_started_at=change),),
        daemon=True,
    )
    waiting.start()
    assert cuts.asked.wait(60), "the run never asked ingestion for a cut after the change"
    waiting.join(1)
    assert waiting.is_alive(), "the run trained on v1 (an earlier run's data) instead of the version cut for it"
    write_feature_set(store, cfg, 2, 1400)
    training.on_features_materialized(features_materialized(store, cfg, 2, 1400))
    waiting.join(60)
    assert not waiting.is_alive()
    run = run_of(runtime, "cut-for-me")
    assert run.state == "completed", run.error
    assert run.dataset_version_id == f"{STREAM}@v2"
    assert run.holdout["rows"] + run.holdout["train_rows"] == 800


def test_a_run_waiting_for_rows_after_a_change_holds_its_model_only(
    runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two models in one stack. A run of the first waits for rows after a change (up to model.change_wait_seconds):
    the other model's request trains meanwhile; the first model's next request waits for its run (one run of a
    model at a time, in the order requested), and both go on when the rows come."""
    import driftloop.services.training.handlers as training_handlers
    from driftloop.services.training.queues import ModelQueues

    monkeypatch.setattr(training_handlers, "CHANGE_POLL_SECONDS", 3600.0)  # only the event can end the wait
    store = LocalObjectStore(runtime.settings.object_store_path)
    cfg = runtime.pipelines[MODEL]
    other_stream, other_model = "tx-other", "other-unit"
    other_cfg = pipeline(other_stream, other_model)
    runtime.pipelines[other_model] = other_cfg
    write_feature_set(store, cfg, 1, 1200)  # one row a minute from 2026-02-01
    write_feature_set(store, other_cfg, 1, 600)
    change = datetime(2026, 2, 1, tzinfo=UTC) + timedelta(minutes=1000)  # 200 rows after it; 500 needed
    answer = {"status": "waiting", "since": change.isoformat(), "rows_after_change": 200}
    cuts = answer_cuts(monkeypatch, lambda _: answer)
    training, queues = handlers(runtime), ModelQueues()

    def submit(event: Event[TrainingRequested]) -> None:
        run = training.accept(event)
        assert run is not None
        queues.submit(run.model, lambda: training.execute(run, event))

    def wait_for_state(request_id: str, state: str) -> None:
        deadline = time.monotonic() + 60
        while run_of(runtime, request_id).state != state:
            assert time.monotonic() < deadline, f"{request_id}: {run_of(runtime, request_id).state}, not {state}"
            time.sleep(0.05)

    submit(request("waits", None, trigger="drift", change_started_at=change))
    assert cuts.asked.wait(60), "the run never asked ingestion for a cut after the change"
    submit(request("same-model-next", None, trigger="manual"))
    other = TrainingRequested(request_id="other-model", model=other_model, trigger="new_data", reason="test")
    submit(new_event(other, producer="test"))
    wait_for_state("other-model", "completed")
    assert run_of(runtime, "waits").state == "pending"
    assert run_of(runtime, "same-model-next").state == "pending", "a model's second run went before its first"
    assert not queues.wait_idle(0.1)  # a stop would wait for the run under way (its rows), as for a consumer

    write_feature_set(store, cfg, 2, 1600)  # 600 rows after the change
    training.on_features_materialized(features_materialized(store, cfg, 2, 1600))
    wait_for_state("waits", "completed")
    wait_for_state("same-model-next", "completed")
    assert queues.wait_idle(10)
    first, second = run_of(runtime, "waits"), run_of(runtime, "same-model-next")
    assert first.holdout["rows"] + first.holdout["train_rows"] == 600
    assert first.ended_at is not None and second.started_at is not None and second.started_at >= first.ended_at
    assert second.dataset_version_id == f"{STREAM}@v2"  # resolved when its turn came


def test_a_run_waiting_for_another_models_fit_says_so_and_trains_after_it(runtime: FakeRuntime) -> None:
    store = LocalObjectStore(runtime.settings.object_store_path)
    other_cfg = pipeline("tx-other", "other-unit")
    runtime.pipelines["other-unit"] = other_cfg
    write_feature_set(store, runtime.pipelines[MODEL], 1, 600)
    write_feature_set(store, other_cfg, 1, 600)
    fitting, release = threading.Event(), threading.Event()

    def held_fit(settings: Settings, job: FitJob, should_abort: Any) -> FitResult:
        if job.pipeline.model.name == MODEL:
            fitting.set()
            assert release.wait(60)
        return fit_feature_set(job)

    training = handlers(runtime, held_fit)
    first = threading.Thread(target=training.on_training_requested, args=(request("holds", None),), daemon=True)
    first.start()
    assert fitting.wait(60)
    other = new_event(
        TrainingRequested(request_id="waits-turn", model="other-unit", trigger="new_data", reason="test"),
        producer="test",
    )
    second = threading.Thread(target=training.on_training_requested, args=(other,), daemon=True)
    second.start()

    def waiting_log() -> str:
        with runtime.Session() as session:
            run_id = session.scalar(sa.select(Run.run_id).where(Run.request_id == "waits-turn"))
        return (training.live_log(run_id) if run_id else None) or ""

    deadline = time.monotonic() + 60
    while "waiting for another run's fit" not in waiting_log():
        assert time.monotonic() < deadline, "the waiting run's log never said why it waited"
        time.sleep(0.05)
    assert run_of(runtime, "waits-turn").state == "pending"  # nothing of it ran beside the other fit
    release.set()
    first.join(60)
    second.join(60)
    assert run_of(runtime, "holds").state == "completed" and run_of(runtime, "waits-turn").state == "completed"
