"""The monitor's handlers without Kafka: a SQLite database, a local object store, published events collected."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from monitor_support import put_reference, raw_inputs

from driftloop.clients.db import create_engine_for, migrate, session_factory
from driftloop.clients.db.models import DriftReport
from driftloop.clients.objectstore import LocalObjectStore
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import FeedbackReceived, ModelPromoted, PredictionLogged
from driftloop.contracts.pipeline import PerformanceSpec, PipelineConfig, load_pipeline
from driftloop.errors import NotFoundError, ServiceError
from driftloop.services.monitor.handlers import MonitorHandlers

PIPELINE = load_pipeline(Path(__file__).resolve().parents[2] / "pipelines" / "transactions.yaml")
MODEL = PIPELINE.model.name


def small_pipeline() -> PipelineConfig:
    monitor = PIPELINE.monitor.model_copy(update={"window_size": 200, "reference_rows": 1000})
    return PIPELINE.model_copy(update={"monitor": monitor})


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    store = LocalObjectStore(tmp_path / "objects")
    rng = np.random.default_rng(1)
    prefix = put_reference(store, PIPELINE, raw_inputs(2000, rng))  # the demo stream: transactions
    published: list[Event] = []
    Session = session_factory(create_engine_for(url))
    pipelines = {MODEL: small_pipeline()}

    def make(pipeline: PipelineConfig | None = None) -> MonitorHandlers:
        return MonitorHandlers({MODEL: pipeline} if pipeline else pipelines, Session, store, published.append)

    return {
        "Session": Session,
        "store": store,
        "published": published,
        "feature_set_uri": store.uri(prefix),
        "rng": rng,
        "make": make,
    }


def promoted(env: dict[str, Any], version: int = 1, alias: str = "champion") -> Event:
    payload = ModelPromoted(
        model=MODEL,
        version=version,
        alias=alias,
        previous_version=None,
        artifact_uri="file:///x/model.zip",
        artifact_sha256="0" * 64,
        dataset_version_id="transactions@v1",
        feature_set_uri=env["feature_set_uri"],
        reason="first version",
        gate_json="{}",
    )
    return new_event(payload, producer="test")


def prediction(inputs: dict[str, Any], version: int = 1, request_id: str = "r1", score: float = 0.1) -> Event:
    payload = PredictionLogged(
        request_id=request_id,
        model=MODEL,
        version=version,
        index=0,
        inputs=inputs,
        prediction=score,
        entity=inputs.get("customer_id"),
    )
    return new_event(payload, producer="test")


def feedback(request_id: str, actual: float) -> Event:
    payload = FeedbackReceived(request_id=request_id, model=MODEL, index=0, actual=actual)
    return new_event(payload, producer="test")


def test_shifted_predictions_emit_drift_detected_once_per_window(env: dict[str, Any]) -> None:
    handlers: MonitorHandlers = env["make"]()
    handlers.on_model_promoted(promoted(env))
    status = handlers.status(MODEL)
    assert status["version"] == 1
    assert status["reference_rows"] == 1000
    assert status["reference_dataset_version_id"] == "transactions@v1"

    for inputs in raw_inputs(200, env["rng"]):
        handlers.on_prediction_logged(prediction(inputs))
    assert env["published"] == []  # same distribution: a report, no drift
    for inputs in raw_inputs(250, env["rng"], amount_scale=2.0):
        handlers.on_prediction_logged(prediction(inputs))

    assert len(env["published"]) == 1
    drift = env["published"][0]
    assert drift.type == "DriftDetected"
    assert drift.envelope.caused_by is None
    assert drift.payload.window_index == 1
    assert drift.payload.reference_dataset_version_id == "transactions@v1"
    assert "amount" in drift.payload.drifted_features
    assert {t.feature for t in drift.payload.tests} == set(PIPELINE.feature_names)
    assert handlers.status(MODEL)["window_fill"] == 50

    reports = handlers.reports(MODEL, limit=10)
    assert [r["window_index"] for r in reports] == [1, 0]
    assert [r["drifted"] for r in reports] == [True, False]
    assert reports[0]["event_id"] == drift.id


def test_a_drift_says_where_inside_its_window_the_shift_began(env: dict[str, Any]) -> None:
    """The window (200 predictions) shifts after its 120th: the alarm locates the shift there, so that a retrain
    waits for rows after it and not for rows after the window's start."""
    handlers: MonitorHandlers = env["make"]()
    handlers.on_model_promoted(promoted(env))
    start = 1_800_000_000.0  # one prediction a second: row k at start + k
    rows = raw_inputs(200 + 120, env["rng"]) + raw_inputs(80, env["rng"], amount_scale=4.0)
    for k, inputs in enumerate(rows):
        event = prediction(inputs, request_id=f"s{k}")
        envelope = replace(event.envelope, occurred_at=datetime.fromtimestamp(start + k, tz=UTC))
        handlers.on_prediction_logged(Event(envelope=envelope, payload=event.payload))

    (drift,) = [e for e in env["published"] if e.type == "DriftDetected"]
    payload = drift.payload
    assert payload.window_index == 1 and "amount" in payload.drifted_features
    assert payload.window_start_time is not None and payload.window_start_time.timestamp() == start + 200
    assert payload.shift_started_time is not None
    located = payload.shift_started_time.timestamp() - start
    assert 200 + 120 - 15 <= located <= 200 + 120 + 15, located


def test_predictions_of_other_versions_are_not_windowed(env: dict[str, Any]) -> None:
    handlers: MonitorHandlers = env["make"]()
    handlers.on_model_promoted(promoted(env, version=2))
    for inputs in raw_inputs(30, env["rng"]):
        handlers.on_prediction_logged(prediction(inputs, version=1))
    handlers.on_prediction_logged(prediction(raw_inputs(1, env["rng"])[0], version=2))
    assert handlers.status(MODEL)["window_fill"] == 1


def test_invalid_inputs_are_skipped_not_windowed(env: dict[str, Any]) -> None:
    handlers: MonitorHandlers = env["make"]()
    handlers.on_model_promoted(promoted(env))
    handlers.on_prediction_logged(prediction({"customer_id": "c1", "age": 30}))
    assert handlers.status(MODEL)["window_fill"] == 0


def test_restart_reloads_the_champion_and_continues_the_open_window(env: dict[str, Any]) -> None:
    first: MonitorHandlers = env["make"]()
    first.on_model_promoted(promoted(env))
    for inputs in raw_inputs(230, env["rng"]):
        first.on_prediction_logged(prediction(inputs))

    restarted: MonitorHandlers = env["make"]()
    status = restarted.status(MODEL)
    assert status["version"] == 1
    assert status["window_index"] == 1
    assert status["window_fill"] == 30  # the open window is in the database: nothing lost
    for inputs in raw_inputs(170, env["rng"]):
        restarted.on_prediction_logged(prediction(inputs))
    with env["Session"]() as session:
        rows = session.query(DriftReport.window_index, DriftReport.window_size).filter(DriftReport.model == MODEL)
        assert sorted(rows.all()) == [(0, 200), (1, 200)]


def test_non_champion_alias_and_unknown_model(env: dict[str, Any]) -> None:
    handlers: MonitorHandlers = env["make"]()
    handlers.on_model_promoted(promoted(env, alias="staging"))
    assert handlers.status(MODEL)["version"] is None
    with pytest.raises(NotFoundError):
        handlers.status("no-such-model")
    with pytest.raises(NotFoundError):
        handlers.reports("no-such-model", limit=5)


def with_monitor(**changes: Any) -> PipelineConfig:
    base = small_pipeline()
    return base.model_copy(update={"monitor": base.monitor.model_copy(update=changes)})


def stored_reports(env: dict[str, Any]) -> list[tuple[Any, ...]]:
    with env["Session"]() as session:
        rows = session.query(DriftReport).filter(DriftReport.model == MODEL).order_by(DriftReport.window_index).all()
        return [(r.window_index, r.window_start, r.window_end, r.window_size, r.drifted, r.tests) for r in rows]


def test_redelivery_after_a_crash_gives_the_same_windows_as_no_crash(env: dict[str, Any], tmp_path: Path) -> None:
    """A crash after handling but before the offset commit redelivers events to a fresh process: nothing is
    counted twice and the reports equal those of a run without the crash (kept in another database)."""
    stream = [prediction(inputs) for inputs in raw_inputs(130, env["rng"], amount_scale=1.3)]
    pipeline = with_monitor(window_size=40, hop=20)
    crashed: MonitorHandlers = env["make"](pipeline)
    crashed.on_model_promoted(promoted(env))
    for event in stream[:75]:
        crashed.on_prediction_logged(event)
    restarted: MonitorHandlers = env["make"](pipeline)
    for event in stream[60:]:  # 15 redelivered
        restarted.on_prediction_logged(event)

    other_url = f"sqlite:///{tmp_path / 'other.sqlite'}"
    migrate(other_url)
    other_session = session_factory(create_engine_for(other_url))
    steady = MonitorHandlers({MODEL: pipeline}, other_session, env["store"], [].append)
    steady.on_model_promoted(promoted(env))
    for event in stream:
        steady.on_prediction_logged(event)

    reports = stored_reports(env)
    assert reports == stored_reports({"Session": other_session})
    # Hopping count windows of 40 every 20: [0, 40), [20, 60), ... [80, 120) over 130 predictions.
    assert [(r[0], r[1], r[2], r[3]) for r in reports] == [(k, 20.0 * k, 20.0 * k + 40, 40) for k in range(5)]
    assert restarted.status(MODEL)["predictions_stored"] == 130


def test_time_windows_close_on_stream_time_and_skip_empty_windows(env: dict[str, Any]) -> None:
    handlers: MonitorHandlers = env["make"](with_monitor(window_by="time", window_seconds=60, min_window_rows=5))
    handlers.on_model_promoted(promoted(env))
    start = 1_800_000_000.0  # a multiple of 60
    times = [start + i for i in range(0, 50)] + [start + 300 + i for i in range(0, 10)] + [start + 400]
    for when in times:
        event = prediction(raw_inputs(1, env["rng"])[0])
        envelope = replace(event.envelope, occurred_at=datetime.fromtimestamp(when, tz=UTC))
        handlers.on_prediction_logged(Event(envelope=envelope, payload=event.payload))
    reports = stored_reports(env)
    first = int(start // 60)
    # [start, start+60) holds 50, the four empty minutes are skipped, [start+300, start+360) holds 10; the
    # prediction at start+400 only opens the next window.
    assert [(r[0], r[3]) for r in reports] == [(first, 50), (first + 5, 10)]
    assert reports[0][1] == start and reports[0][2] == start + 60


def test_quality_reports_nulls_out_of_range_and_unseen_categories(env: dict[str, Any]) -> None:
    handlers: MonitorHandlers = env["make"](with_monitor(window_size=20))
    handlers.on_model_promoted(promoted(env))
    rows = raw_inputs(20, env["rng"])
    rows[0]["age"] = None
    rows[1]["age"] = 150
    rows[2]["merchant_category"] = "casino"
    rows[3]["hour"] = -1
    for inputs in rows:
        handlers.on_prediction_logged(prediction(inputs))
    (report,) = handlers.quality_reports(MODEL, limit=5)
    quality = report["quality"]
    assert quality["rows"] == 20
    assert quality["fields"]["age"]["nulls"] == 1
    assert quality["fields"]["age"]["out_of_range"] == 1
    assert quality["fields"]["hour"]["out_of_range"] == 1
    assert quality["fields"]["merchant_category"]["not_allowed"] == 1
    assert quality["unseen_categories"] == {"merchant_category": {"count": 1, "values": ["casino"]}}
    assert quality["fields"]["amount"] == {"nulls": 0, "null_rate": 0.0, "out_of_range": 0, "not_allowed": 0}


def test_performance_degraded_fires_from_feedback_joined_by_request_id(env: dict[str, Any]) -> None:
    performance = PerformanceSpec(metric="accuracy", window_size=20, threshold=0.8)
    handlers: MonitorHandlers = env["make"](with_monitor(window_size=500, performance=performance))
    handlers.on_model_promoted(promoted(env))
    inputs = raw_inputs(40, env["rng"])
    # Window 0: all right; window 1: half wrong. Feedback for r0 arrives before its prediction.
    handlers.on_feedback_received(feedback("r0", 1.0))
    for i, row in enumerate(inputs):
        handlers.on_prediction_logged(prediction(row, request_id=f"r{i}", score=0.9))
    for i in range(1, 40):
        actual = 1.0 if i < 20 or i % 2 == 0 else 0.0
        handlers.on_feedback_received(feedback(f"r{i}", actual))
    handlers.on_feedback_received(feedback("unknown-request", 1.0))

    reports = handlers.performance_reports(MODEL, limit=5)
    assert [(r["window_index"], r["value"], r["degraded"]) for r in reports] == [(1, 0.5, True), (0, 1.0, False)]
    assert reports[0]["unmatched_feedback"] == 1
    degraded = [e for e in env["published"] if e.type == "PerformanceDegraded"]
    assert len(degraded) == 1
    assert degraded[0].payload.metric == "accuracy"
    assert degraded[0].payload.value == 0.5
    assert degraded[0].payload.threshold == 0.8
    assert degraded[0].payload.window_size == 20
    assert reports[0]["event_id"] == degraded[0].id


def promoted_version(env: dict[str, Any], version: int, previous: int | None, artifact: tuple[str, str]) -> Event:
    payload = ModelPromoted(
        model=MODEL,
        version=version,
        alias="champion",
        previous_version=previous,
        artifact_uri=artifact[0],
        artifact_sha256=artifact[1],
        dataset_version_id="transactions@v1",
        feature_set_uri=env["feature_set_uri"],
        reason="gate passed",
        gate_json="{}",
    )
    return new_event(payload, producer="test")


def test_performance_windows_belong_to_one_version(env: dict[str, Any]) -> None:
    """Feedback of v1's predictions arriving after v2's promotion stays in v1's windows: no window mixes two
    versions, and each alarm names the version it is about."""
    performance = PerformanceSpec(metric="accuracy", window_size=10, threshold=0.8)
    handlers: MonitorHandlers = env["make"](with_monitor(window_size=500, performance=performance))
    handlers.on_model_promoted(promoted(env))
    inputs = raw_inputs(20, env["rng"])
    for i, row in enumerate(inputs[:10]):
        handlers.on_prediction_logged(prediction(row, version=1, request_id=f"a{i}", score=0.9))
    for i in range(5):
        handlers.on_feedback_received(feedback(f"a{i}", 1.0))
    handlers.on_model_promoted(promoted(env, version=2))
    for i, row in enumerate(inputs[10:]):
        handlers.on_prediction_logged(prediction(row, version=2, request_id=f"b{i}", score=0.9))
    # Interleaved: the rest of v1's labels (all wrong) and v2's (all right).
    for i in range(5, 10):
        handlers.on_feedback_received(feedback(f"a{i}", 0.0))
        handlers.on_feedback_received(feedback(f"b{i - 5}", 1.0))
    for i in range(5, 10):
        handlers.on_feedback_received(feedback(f"b{i}", 1.0))

    reports = {r["version"]: r for r in handlers.performance_reports(MODEL, limit=5)}
    assert set(reports) == {1, 2}
    assert reports[1]["versions"] == [1] and reports[1]["value"] == 0.5 and reports[1]["degraded"]
    assert reports[2]["versions"] == [2] and reports[2]["value"] == 1.0 and not reports[2]["degraded"]
    (degraded,) = [e for e in env["published"] if e.type == "PerformanceDegraded"]
    assert degraded.payload.version == 1
    assert degraded.payload.reason == "threshold"


def test_drift_event_carries_estimated_and_measured_performance(env: dict[str, Any]) -> None:
    handlers: MonitorHandlers = env["make"]()
    handlers.on_model_promoted(promoted(env))
    rng = env["rng"]
    for inputs in raw_inputs(200, rng):
        handlers.on_prediction_logged(prediction(inputs, score=float(rng.choice([0.02, 0.98]))))
    for inputs in raw_inputs(200, rng, amount_scale=2.0):
        handlers.on_prediction_logged(prediction(inputs, score=float(rng.uniform(0.35, 0.65))))
    (drift,) = [e for e in env["published"] if e.type == "DriftDetected"]
    payload = drift.payload
    assert payload.estimated_metric == "roc_auc"
    assert payload.estimated_reference is not None and payload.estimated_reference > 0.9  # confident first window
    assert payload.estimated_value is not None and payload.estimated_value < 0.7  # unsure predictions after
    assert payload.estimated_degraded is True
    assert payload.performance_degraded is None  # no labels yet
    assert payload.window_start_time is not None and payload.window_end_time is not None
    assert handlers.reports(MODEL, limit=1)[0]["window_index"] == 1


def test_guard_scores_the_previous_champion_on_the_new_champions_labeled_rows(
    env: dict[str, Any], tmp_path: Path
) -> None:
    from model_factory import put_artifact, raw_transactions, train_artifact

    from driftloop.contracts.featuredefs import compute_features

    pipeline = small_pipeline()
    performance = PerformanceSpec(metric="roc_auc", window_size=200)
    pipeline = pipeline.model_copy(
        update={"monitor": pipeline.monitor.model_copy(update={"window_size": 500, "performance": performance})}
    )
    handlers: MonitorHandlers = env["make"](pipeline)
    history = compute_features(raw_transactions(3000, seed=5), pipeline)
    good = put_artifact(env["store"], MODEL, "good", train_artifact(pipeline, history))
    bad = put_artifact(env["store"], MODEL, "bad", train_artifact(pipeline, history, quality="bad"))
    handlers.on_model_promoted(promoted_version(env, 1, None, good))
    handlers.on_model_promoted(promoted_version(env, 2, 1, bad))

    live = raw_transactions(200, seed=9)
    bad_scores = train_artifact(pipeline, history, quality="bad").predict(compute_features(live, pipeline))
    for i, row in enumerate(live.drop(columns=["event_time", "is_fraud"]).to_dict("records")):
        handlers.on_prediction_logged(
            prediction({k: _plain(v) for k, v in row.items()}, version=2, request_id=f"g{i}", score=bad_scores[i])
        )
    for i, label in enumerate(live["is_fraud"]):
        handlers.on_feedback_received(feedback(f"g{i}", float(label)))

    (report,) = handlers.performance_reports(MODEL, limit=5)
    guard = report["metrics"]["guard"]
    assert guard["previous_version"] == 1 and guard["tripped"] is True
    assert guard["previous_value"] > report["value"] + 0.02
    (degraded,) = [e for e in env["published"] if e.type == "PerformanceDegraded"]
    assert degraded.payload.reason == "guard"
    assert degraded.payload.version == 2 and degraded.payload.previous_version == 1
    assert degraded.payload.threshold == pytest.approx(guard["previous_value"] - 0.02)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def test_a_change_detector_on_labeled_errors_alarms_located_and_a_restart_neither_repeats_nor_forgets(
    env: dict[str, Any],
) -> None:
    """monitor.performance.change_detector: adwin. Labels right for 300 predictions, then wrong a third of the
    time: one PerformanceDegraded (reason change) whose window starts near the 300th prediction. The monitor
    restarts after the 300th (its new detector is fed the stored labels, so it still knows the old level) and again
    after the alarm (the same change is not reported twice)."""
    performance = PerformanceSpec(metric="accuracy", window_size=1000, change_detector="adwin")
    pipeline = with_monitor(window_size=2000, performance=performance)
    handlers: MonitorHandlers = env["make"](pipeline)
    handlers.on_model_promoted(promoted(env))
    start = 1_800_000_000.0
    rng = np.random.default_rng(5)

    def serve(k: int, score: float, actual: float, monitor: MonitorHandlers) -> None:
        event = prediction(raw_inputs(1, env["rng"])[0], request_id=f"c{k}", score=score)
        envelope = replace(event.envelope, occurred_at=datetime.fromtimestamp(start + k, tz=UTC))
        monitor.on_prediction_logged(Event(envelope=envelope, payload=event.payload))
        monitor.on_feedback_received(feedback(f"c{k}", actual))

    def alarms() -> list[Event]:
        return [e for e in env["published"] if e.type == "PerformanceDegraded"]

    for k in range(300):
        serve(k, 0.9, 1.0 if rng.random() < 0.97 else 0.0, handlers)
    assert alarms() == []
    restarted: MonitorHandlers = env["make"](pipeline)
    k = 300
    while not alarms() and k < 700:
        serve(k, 0.9, 0.0 if rng.random() < 0.35 else 1.0, restarted)
        k += 1
    (alarm,) = alarms()
    assert alarm.payload.reason == "change"
    assert alarm.payload.metric == "error_rate"
    assert alarm.payload.version == 1
    assert alarm.payload.threshold < 0.1 < 0.2 < alarm.payload.value
    began = alarm.payload.window_start_time.timestamp() - start
    assert 250 <= began <= 350, began

    again: MonitorHandlers = env["make"](pipeline)
    for j in range(k, k + 200):
        serve(j, 0.9, 0.0 if rng.random() < 0.35 else 1.0, again)
    assert len(alarms()) == 1


def test_a_prediction_that_comes_before_its_promotion_asks_the_registry_and_is_windowed(env: dict[str, Any]) -> None:
    """Predictions and promotions come on different topics: v2's first predictions may come before v2's promotion.
    The registry is asked (once per version while it answers the same), and what it says is watched."""
    asked: list[str] = []
    registry_champion = {"version": 2}

    def ask_champion(model: str) -> bool:
        asked.append(model)
        if registry_champion["version"] == handlers.status(MODEL)["version"]:
            return False
        handlers.on_model_promoted(promoted(env, version=registry_champion["version"]))
        return True

    handlers: MonitorHandlers = env["make"]()
    handlers.ask_champion = ask_champion
    handlers.on_model_promoted(promoted(env, version=1))
    for inputs in raw_inputs(3, env["rng"]):
        handlers.on_prediction_logged(prediction(inputs, version=2))
    assert asked == [MODEL]
    assert handlers.status(MODEL)["version"] == 2
    assert handlers.status(MODEL)["window_fill"] == 3
    # v1's late predictions: asked once, the registry still says v2, so they are not windowed.
    for inputs in raw_inputs(5, env["rng"]):
        handlers.on_prediction_logged(prediction(inputs, version=1))
    assert asked == [MODEL, MODEL]
    assert handlers.status(MODEL)["window_fill"] == 3


def test_a_registry_that_does_not_answer_leaves_the_prediction_unwindowed(env: dict[str, Any]) -> None:
    def ask_champion(model: str) -> bool:
        raise ServiceError("registry unreachable", status_code=503, code="unreachable")

    handlers: MonitorHandlers = env["make"]()
    handlers.ask_champion = ask_champion
    handlers.on_model_promoted(promoted(env, version=1))
    handlers.on_prediction_logged(prediction(raw_inputs(1, env["rng"])[0], version=2))
    assert handlers.status(MODEL)["version"] == 1
    assert handlers.status(MODEL)["window_fill"] == 0
