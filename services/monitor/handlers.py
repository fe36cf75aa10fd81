"""The monitor's event handlers: champion references, durable windows, drift/quality/performance reports.

Durability (the embedded broker cannot restore faust Tables, see the README): every prediction of the watched
champion is a ``monitor_observations`` row keyed by its event id and numbered (``seq``) in arrival order, and every
window is computed from those rows in the same transaction that stores its report. A redelivered prediction
(after a crash or ``kill -9``) is found by its event id and not counted again; a window is closed exactly once
(unique report per window index); after a restart the next sequence number, the last closed window and the
stream time are read back from the database. So a monitor that restarts reports the same windows and statistics
as one that never stopped.

Windows (``monitor`` in the pipeline): by count (``window_size`` predictions) or by event time
(``window_seconds``), tumbling or hopping (``hop``). Window ``k`` covers ``[k * hop, k * hop + length)`` of the
sequence numbers (count) or epoch seconds (time); a time window closes when a prediction at or past its end
arrives (stream time), empty time windows are skipped.

Per version: drift, quality and performance windows belong to one model version. A promotion starts the new
champion's windows with its own reference (the old version's predictions are no longer windowed); feedback is
joined with the stored prediction by request id and row and numbered per (model, version) (``version_seq``), cut
into tumbling windows of ``monitor.performance.window_size`` of that version. Every alarm names its version; the
triggers service drops alarms about a version that is no longer champion as stale.

Change detection (``monitor.performance.change_detector: adwin``, ``changes.py``): each joined label's error goes to
its version's ADWIN; a located rise is a ``PerformanceDegraded`` with ``reason: change`` whose window starts where
the change began.

Estimated performance (classifiers): each drift window carries the metric expected from its predicted
probabilities (CBPE, ``stats.estimate_performance``) next to the version's first window's, and the version's last
measured performance window, so the retrain policy (``triggers.policy``) can tell harmful drift from harmless.

Guard after a promotion (``triggers.policy.guard``): the new champion's first performance window is scored with the
previous champion too (its artifact, on the same rows' features); worse by more than ``max_drop`` emits
``PerformanceDegraded`` with ``reason: guard`` and the previous champion's numbers (the triggers roll back).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from driftloop.clients.db.models import (
    DriftReport,
    MonitoredModel,
    MonitorFeedback,
    MonitorObservation,
    MonitorVersion,
    PerformanceReport,
    utcnow,
)
from driftloop.clients.objectstore import ObjectStore
from driftloop.contracts.aliases import CHAMPION
from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.featuredefs import compute_features, row_features
from driftloop.contracts.payloads import (
    DriftDetected,
    FeedbackReceived,
    ModelPromoted,
    Payload,
    PerformanceDegraded,
    PredictionLogged,
)
from driftloop.contracts.pipeline import AllowedValuesRule, PipelineConfig, RangeRule, pipeline_for_model
from driftloop.errors import DriftloopError, ValidationFailed

from . import metrics
from .changes import MAX_SEGMENT, ErrorDetector, error_of
from .reference import read_reference
from .stats import (
    MAXIMIZED_METRICS,
    MISSING_CATEGORY,
    WindowResult,
    estimate_performance,
    evaluate_window,
    event_prediction_test,
    is_degraded,
    locate_shift,
    performance_metrics,
    prediction_drift_alarms,
    prediction_test,
)

log = logging.getLogger(__name__)

# How often the registry is asked about one version whose predictions come while another is watched.
CHAMPION_ASK_SECONDS = 5.0
# A label joined with the stored prediction it is about (same version, request and row).
LABELED_PREDICTION = sa.and_(
    MonitorObservation.model == MonitorFeedback.model,
    MonitorObservation.version == MonitorFeedback.version,
    MonitorObservation.request_id == MonitorFeedback.request_id,
    MonitorObservation.row_index == MonitorFeedback.row_index,
)
# Unseen category values listed per feature in a quality report (the count covers all).
MAX_LISTED_VALUES = 10


@dataclass
class Watch:
    """The champion of one model, its reference sample, and where its windows stand (mirrors the database)."""

    model: str
    version: int
    dataset_version_id: str
    feature_set_uri: str
    reference: pd.DataFrame
    # Categories of each categorical feature in the reference (quality: unseen categories).
    reference_categories: dict[str, set[str]]
    next_seq: int = 0
    # Index of the last window closed (or skipped, for empty time windows); None: none yet.
    closed_through: int | None = None
    # Latest event time seen (epoch seconds): the clock of time windows.
    stream_time: float = -math.inf
    # Predictions of the champion's first window: the baseline of prediction drift.
    baseline_predictions: np.ndarray | None = None


class MonitorHandlers:
    def __init__(
        self,
        pipelines: Mapping[str, PipelineConfig],
        Session: sessionmaker[Session],
        store: ObjectStore,
        publish: Callable[[Event[Payload]], None],
        producer: str = "monitor",
        ask_champion: Callable[[str], object] | None = None,
    ) -> None:
        self.pipelines = pipelines
        # Asks the registry (the truth) for a model's champion and watches it if the monitor's record is older
        # (``champion.ChampionReconcile.reconcile_model``). Predictions and promotions come on different topics,
        # in no common order: a prediction of a version the monitor does not watch may be the first news of its
        # promotion.
        self.ask_champion = ask_champion
        self._asked: dict[tuple[str, int], float] = {}  # (model, version) → when the registry was last asked
        self.Session = Session
        self.store = store
        self.publish = publish
        self.producer = producer
        self._watches: dict[str, Watch] = {}
        # Models whose watch was looked up in the database since start (a restart reloads lazily).
        self._restored: set[str] = set()
        # Change detectors per (model, version) (monitor.performance.change_detector), rebuilt lazily after a start.
        self._detectors: dict[tuple[str, int], ErrorDetector] = {}
        # The consumer thread writes, the HTTP threads read.
        self._lock = threading.RLock()

    # --- events ------------------------------------------------------------------------------------------

    def on_model_promoted(self, event: Event[ModelPromoted]) -> None:
        promoted = event.payload
        model = promoted.model
        if promoted.alias != CHAMPION:
            log.info(
                "monitor: %s alias %r moved to v%s; only the champion is monitored",
                model,
                promoted.alias,
                promoted.version,
            )
            return
        pipeline = pipeline_for_model(self.pipelines, model)
        watch = self._load_watch(pipeline, promoted.version, promoted.dataset_version_id, promoted.feature_set_uri)
        with self.Session.begin() as session:
            row = session.get(MonitoredModel, model)
            if row is None:
                row = MonitoredModel(model=model)
                session.add(row)
            row.version = promoted.version
            row.dataset_version_id = promoted.dataset_version_id
            row.feature_set_uri = promoted.feature_set_uri
            row.event_id = event.id
            row.updated_at = utcnow()
            if session.get(MonitorVersion, (model, promoted.version)) is None:
                session.add(
                    MonitorVersion(
                        model=model,
                        version=promoted.version,
                        artifact_uri=promoted.artifact_uri,
                        artifact_sha256=promoted.artifact_sha256,
                        dataset_version_id=promoted.dataset_version_id,
                        previous_version=promoted.previous_version,
                        rollback=promoted.rollback,
                        event_id=event.id,
                    )
                )
        with self._lock:
            self._watches[model] = watch
            self._restored.add(model)
        metrics.WINDOW_FILL.labels(model=model).set(self._fill(pipeline, watch))
        log.info(
            "monitor: watching %s v%d, reference %s (%d rows), %d predictions stored",
            model,
            watch.version,
            watch.dataset_version_id,
            len(watch.reference),
            watch.next_seq,
        )

    def on_prediction_logged(self, event: Event[PredictionLogged]) -> None:
        prediction = event.payload
        model = prediction.model
        watch = self._watch(model)
        if watch is None or prediction.version != watch.version:
            watch = self._watch_after_asking(model, prediction.version, watch)
        if watch is None:
            metrics.PREDICTIONS_SKIPPED.labels(model=model, reason="no_reference").inc()
            return
        if prediction.version != watch.version:
            # Served by a version that is no longer (or not yet) the champion: not comparable to the reference.
            metrics.PREDICTIONS_SKIPPED.labels(model=model, reason="not_champion").inc()
            return
        pipeline = pipeline_for_model(self.pipelines, model)
        try:
            row = feature_row(prediction.inputs, pipeline)
        except ValidationFailed as exc:
            metrics.PREDICTIONS_SKIPPED.labels(model=model, reason="invalid_inputs").inc()
            log.warning("monitor: prediction %s of %s has unusable inputs (%s): %s", event.id, model, exc.reason, exc)
            return
        event_time = event.envelope.occurred_at.timestamp()
        with self._lock:
            state = (watch.next_seq, watch.closed_through, watch.stream_time, watch.baseline_predictions)
            try:
                with self.Session.begin() as session:
                    if session.get(MonitorObservation, event.id) is None:
                        self._add_observation(session, watch, event, row, event_time, pipeline)
                    else:
                        metrics.PREDICTIONS_SKIPPED.labels(model=model, reason="duplicate").inc()
                    self._close_due_windows(session, pipeline, watch)
            except Exception:
                # The transaction is rolled back: so is the in-memory mirror.
                watch.next_seq, watch.closed_through, watch.stream_time, watch.baseline_predictions = state
                raise
            fill = self._fill(pipeline, watch)
        metrics.WINDOW_FILL.labels(model=model).set(fill)

    def on_feedback_received(self, event: Event[FeedbackReceived]) -> None:
        received = event.payload
        model = received.model
        if model not in self.pipelines:
            metrics.FEEDBACK_SKIPPED.labels(model=model, reason="unknown_model").inc()
            log.warning("monitor: feedback %s for unknown model %r", event.id, model)
            return
        pipeline = self.pipelines[model]
        with self._lock, self.Session.begin() as session:
            if session.get(MonitorFeedback, event.id) is not None:
                return
            feedback = MonitorFeedback(
                event_id=event.id,
                model=model,
                request_id=received.request_id,
                row_index=received.index,
                actual=float(received.actual),
                received_at=utcnow(),
            )
            session.add(feedback)
            observation = session.scalar(
                sa.select(MonitorObservation)
                .where(
                    MonitorObservation.model == model,
                    MonitorObservation.request_id == feedback.request_id,
                    MonitorObservation.row_index == feedback.row_index,
                )
                .limit(1)
            )
            if observation is None:
                # The prediction is not known (yet): joined when it arrives, if it is a champion prediction.
                metrics.FEEDBACK_SKIPPED.labels(model=model, reason="prediction_unknown").inc()
                return
            self._join(session, feedback, observation)
            self._detect_change(session, pipeline, feedback, observation)
            self._close_performance_windows(session, pipeline, observation.version)

    # --- observations and windows ------------------------------------------------------------------------

    def _add_observation(
        self,
        session: Session,
        watch: Watch,
        event: Event[PredictionLogged],
        row: dict[str, Any],
        event_time: float,
        pipeline: PipelineConfig,
    ) -> None:
        spec, prediction = pipeline.monitor, event.payload
        if spec.window_by == "time" and watch.closed_through is not None:
            closed_end = watch.closed_through * spec.window_hop + spec.window_length
            if event_time < closed_end:
                # Its windows are closed already; it is stored (and joined with feedback) but not re-reported.
                metrics.PREDICTIONS_SKIPPED.labels(model=watch.model, reason="late").inc()
        session.add(
            MonitorObservation(
                event_id=event.id,
                model=watch.model,
                version=watch.version,
                seq=watch.next_seq,
                event_time=event_time,
                request_id=prediction.request_id,
                row_index=prediction.index,
                features={k: _json_value(v) for k, v in row.items()},
                inputs={k: _json_value(v) for k, v in prediction.inputs.items()},
                prediction=float(prediction.prediction),
            )
        )
        watch.next_seq += 1
        watch.stream_time = max(watch.stream_time, event_time)
        session.flush()
        # Feedback that arrived before its prediction is joined now.
        early = session.scalars(
            sa.select(MonitorFeedback).where(
                MonitorFeedback.model == watch.model,
                MonitorFeedback.request_id == prediction.request_id,
                MonitorFeedback.row_index == prediction.index,
                MonitorFeedback.seq.is_(None),
            )
        ).all()
        if early:
            observation = session.get(MonitorObservation, event.id)
            assert observation is not None
            for feedback in early:
                self._join(session, feedback, observation)
                self._detect_change(session, pipeline, feedback, observation)
            self._close_performance_windows(session, pipeline, observation.version)

    def _close_due_windows(self, session: Session, pipeline: PipelineConfig, watch: Watch) -> None:
        spec = pipeline.monitor
        length, hop = spec.window_length, spec.window_hop
        k = 0 if watch.closed_through is None else watch.closed_through + 1
        if spec.window_by == "count":
            while k * hop + length <= watch.next_seq:
                self._close_window(session, pipeline, watch, k, MonitorObservation.seq, k * hop, k * hop + length)
                watch.closed_through = k
                k += 1
            return
        if watch.closed_through is None:
            first = session.scalar(
                sa.select(sa.func.min(MonitorObservation.event_time)).where(
                    MonitorObservation.model == watch.model, MonitorObservation.version == watch.version
                )
            )
            if first is None:
                return
            k = math.floor((first - length) / hop) + 1
        while k * hop + length <= watch.stream_time:
            start, end = k * hop, k * hop + length
            closed = self._close_window(session, pipeline, watch, k, MonitorObservation.event_time, start, end)
            watch.closed_through = k
            if closed:
                k += 1
                continue
            # An empty window: jump to the first window holding the next prediction.
            following = session.scalar(
                sa.select(sa.func.min(MonitorObservation.event_time)).where(
                    MonitorObservation.model == watch.model,
                    MonitorObservation.version == watch.version,
                    MonitorObservation.event_time >= end,
                )
            )
            if following is None:
                break
            k = max(k + 1, math.floor((following - length) / hop) + 1)

    def _close_window(
        self,
        session: Session,
        pipeline: PipelineConfig,
        watch: Watch,
        window_index: int,
        column: Any,
        start: float,
        end: float,
    ) -> bool:
        """Test window ``window_index`` (rows with ``start <= column < end``) and store its report; False when the
        window has no rows (nothing reported)."""
        observations = session.scalars(
            sa.select(MonitorObservation)
            .where(
                MonitorObservation.model == watch.model,
                MonitorObservation.version == watch.version,
                column >= start,
                column < end,
            )
            .order_by(MonitorObservation.seq)
        ).all()
        if not observations:
            return False
        exists = session.scalar(
            sa.select(DriftReport.id).where(
                DriftReport.model == watch.model,
                DriftReport.version == watch.version,
                DriftReport.window_index == window_index,
            )
        )
        if exists is not None:
            return True
        spec = pipeline.monitor
        window = window_frame([o.features for o in observations], pipeline)
        predictions = np.array([o.prediction for o in observations], dtype="float64")
        quality = window_quality([o.inputs for o in observations], window, pipeline, watch.reference_categories)
        if len(window) < spec.min_window_rows:
            result = WindowResult(tests=[], drifted=False)
        else:
            result = evaluate_window(watch.reference, window, pipeline.features, spec)
        pred_test = None
        if watch.baseline_predictions is None:
            watch.baseline_predictions = predictions
        else:
            pred_test = prediction_test(watch.baseline_predictions, predictions, spec.alpha)
            # A short time window is reported without alarms, like its feature tests.
            pred_test["alarm"] = len(window) >= spec.min_window_rows and prediction_drift_alarms(
                pred_test, spec.prediction_drift, spec.alpha
            )
        prediction_drifted = bool(pred_test and pred_test["alarm"])
        drifted = result.drifted or prediction_drifted
        performance = self._window_performance(session, pipeline, watch, predictions)
        times = (observations[0].event_time, max(o.event_time for o in observations))
        event = None
        if drifted:
            # The window's rows are its observations, in order: the shift's row is its observation's.
            shift = locate_shift(watch.reference, window, pipeline.features, result.drifted_features)
            shifted_at = observations[shift].event_time if 0 < shift < len(observations) else None
            event = self._drift_event(
                pipeline, watch, result, len(window), window_index, pred_test, performance, times, shifted_at
            )
        session.add(
            DriftReport(
                model=watch.model,
                version=watch.version,
                window_index=window_index,
                window_size=len(window),
                drifted=drifted,
                tests=[t.to_dict() for t in result.tests],
                event_id=event.id if event else None,
                window_start=float(start),
                window_end=float(end),
                prediction_test=pred_test,
                quality=quality,
                performance=performance,
            )
        )
        session.flush()
        self._export_window_metrics(watch.model, result, pred_test, quality)
        log.info(
            "monitor: %s v%d window %d (%d rows): %s",
            watch.model,
            watch.version,
            window_index,
            len(window),
            (f"DRIFT in {result.drifted_features}" if result.drifted else "no feature drift")
            + (" and PREDICTION DRIFT" if prediction_drifted else ""),
        )
        if event is not None:
            # Inside the transaction: a failed publish rolls the report back and the window is closed again.
            self.publish(event)
        return True

    def _export_window_metrics(
        self, model: str, result: WindowResult, pred_test: dict[str, Any] | None, quality: dict[str, Any]
    ) -> None:
        for test in result.tests:
            metrics.DRIFT_STATISTIC.labels(model=model, feature=test.feature, test=test.test).set(test.statistic)
            metrics.DRIFT_ADJUSTED_P_VALUE.labels(model=model, feature=test.feature).set(test.adjusted_p_value)
            metrics.DRIFT_PSI.labels(model=model, feature=test.feature).set(test.psi)
            if test.wasserstein is not None:
                metrics.DRIFT_WASSERSTEIN.labels(model=model, feature=test.feature).set(test.wasserstein)
        if pred_test is not None:
            metrics.PREDICTION_DRIFT_STATISTIC.labels(model=model).set(pred_test["statistic"])
            metrics.PREDICTION_DRIFT_PSI.labels(model=model).set(pred_test["psi"])
            metrics.PREDICTION_DRIFT.labels(model=model).set(1.0 if pred_test["alarm"] else 0.0)
        for name, counts in quality["fields"].items():
            metrics.QUALITY_NULL_RATE.labels(model=model, field=name).set(counts["null_rate"])
        for kind in ("out_of_range", "not_allowed", "unseen_category"):
            metrics.QUALITY_ISSUES.labels(model=model, kind=kind).set(quality["totals"][kind])
        drifted = result.drifted or bool(pred_test and pred_test["alarm"])
        metrics.WINDOWS_CLOSED.labels(model=model, drifted=str(drifted).lower()).inc()

    def _drift_event(
        self,
        pipeline: PipelineConfig,
        watch: Watch,
        result: WindowResult,
        size: int,
        window_index: int,
        pred_test: dict[str, Any] | None,
        performance: dict[str, Any],
        times: tuple[float, float],
        shifted_at: float | None,
    ) -> Event[DriftDetected]:
        """Feature drift, prediction drift, or both (``prediction_drifted``; ``drifted_features`` may be empty),
        with the version's estimated and last measured performance (the policy's confirmation), and where inside
        the window the shift began (``shifted_at``; None: at its start)."""
        drift = DriftDetected(
            model=watch.model,
            version=watch.version,
            reference_dataset_version_id=watch.dataset_version_id,
            window_size=size,
            window_index=window_index,
            alpha=pipeline.monitor.alpha,
            correction=pipeline.monitor.correction,
            drifted_features=result.drifted_features,
            tests=[t.to_event() for t in result.tests],
            prediction_drifted=bool(pred_test and pred_test["alarm"]),
            prediction_test=event_prediction_test(pred_test) if pred_test is not None else None,
            window_start_time=_utc(times[0]),
            window_end_time=_utc(times[1]),
            shift_started_time=None if shifted_at is None else _utc(shifted_at),
            performance_metric=performance.get("performance_metric"),
            performance_value=performance.get("performance_value"),
            performance_degraded=performance.get("performance_degraded"),
            estimated_metric=performance.get("estimated_metric"),
            estimated_value=performance.get("estimated_value"),
            estimated_reference=performance.get("estimated_reference"),
            estimated_degraded=performance.get("estimated_degraded"),
        )
        # No cause: drift is a root cause and starts a new cascade.
        return new_event(drift, producer=self.producer)

    # --- performance -------------------------------------------------------------------------------------

    def _window_performance(
        self, session: Session, pipeline: PipelineConfig, watch: Watch, predictions: np.ndarray
    ) -> dict[str, Any]:
        """The version's performance as a drift window sees it: estimated from the window's probabilities against
        the version's first window (classifiers), and the version's last measured performance window."""
        out: dict[str, Any] = {}
        policy = pipeline.triggers.policy
        if pipeline.model.task == "classification":
            metric = policy.estimate_metric
            threshold = pipeline.monitor.performance.decision_threshold
            value = estimate_performance(predictions, metric, threshold)
            baseline = watch.baseline_predictions if watch.baseline_predictions is not None else predictions
            reference = estimate_performance(baseline, metric, threshold)
            out.update(estimated_metric=metric, estimated_value=value, estimated_reference=reference)
            if value is not None and reference is not None:
                out["estimated_degraded"] = reference - value > policy.estimate_max_drop
        last = session.scalars(
            sa.select(PerformanceReport)
            .where(PerformanceReport.model == watch.model, PerformanceReport.version == watch.version)
            .order_by(PerformanceReport.version_window.desc())
            .limit(1)
        ).first()
        if last is not None:
            out.update(performance_metric=last.metric, performance_value=last.value, performance_degraded=last.degraded)
        return out

    def _join(self, session: Session, feedback: MonitorFeedback, observation: MonitorObservation) -> None:
        last = session.scalar(
            sa.select(sa.func.max(MonitorFeedback.seq)).where(MonitorFeedback.model == feedback.model)
        )
        last_of_version = session.scalar(
            sa.select(sa.func.max(MonitorFeedback.version_seq)).where(
                MonitorFeedback.model == feedback.model, MonitorFeedback.version == observation.version
            )
        )
        feedback.version = observation.version
        feedback.prediction = observation.prediction
        feedback.seq = 0 if last is None else int(last) + 1
        feedback.version_seq = 0 if last_of_version is None else int(last_of_version) + 1
        session.flush()

    def _detect_change(
        self, session: Session, pipeline: PipelineConfig, feedback: MonitorFeedback, observation: MonitorObservation
    ) -> None:
        """Feed the joined label's error to its version's change detector; a located rise is a PerformanceDegraded
        (reason ``change``) whose window starts where the change began."""
        spec = pipeline.monitor.performance
        if spec.change_detector == "none" or feedback.version_seq is None:
            return
        model, version = pipeline.model.name, int(observation.version)
        detector = self._detector(session, pipeline, version, before_seq=int(feedback.version_seq))
        error = error_of(feedback.actual, observation.prediction, pipeline.model.task, spec.decision_threshold)
        change = detector.update(error, observation.event_time)
        if change is None:
            return
        metrics.CHANGES_DETECTED.labels(model=model).inc()
        event = new_event(
            PerformanceDegraded(
                model=model,
                version=version,
                metric=change.metric,
                value=change.after,
                threshold=change.before,
                window_size=change.rows_after,
                window_start_time=_utc(change.started_at),
                window_end_time=_utc(change.detected_at),
                reason="change",
            ),
            producer=self.producer,
        )
        log.info(
            "monitor: %s v%d change detected: %s %.4g -> %.4g, began %d labeled predictions ago (at %s)",
            model,
            version,
            change.metric,
            change.before,
            change.after,
            change.rows_after,
            _utc(change.started_at).isoformat(),
        )
        self.publish(event)

    def _detector(self, session: Session, pipeline: PipelineConfig, version: int, before_seq: int) -> ErrorDetector:
        """The version's detector; new in this process: fed the version's earlier labeled errors first (no alarm)."""
        model, spec = pipeline.model.name, pipeline.monitor.performance
        detector = self._detectors.get((model, version))
        if detector is not None:
            return detector
        detector = ErrorDetector(
            metric="error_rate" if pipeline.model.task == "classification" else "mae",
            delta=spec.adwin_delta,
            clock=spec.adwin_clock,
        )
        earlier = session.execute(
            sa.select(MonitorFeedback.actual, MonitorObservation.prediction, MonitorObservation.event_time)
            .join(MonitorObservation, LABELED_PREDICTION)
            .where(
                MonitorFeedback.model == model,
                MonitorFeedback.version == version,
                MonitorFeedback.version_seq < before_seq,
            )
            .order_by(MonitorFeedback.version_seq.desc())
            .limit(MAX_SEGMENT)
        ).all()
        for actual, prediction, event_time in reversed(earlier):
            detector.update(error_of(actual, prediction, pipeline.model.task, spec.decision_threshold), event_time)
        self._detectors[(model, version)] = detector
        return detector

    def _close_performance_windows(self, session: Session, pipeline: PipelineConfig, version: int) -> None:
        """Close the full performance windows of ``version`` (its own labeled predictions only)."""
        model = pipeline.model.name
        size = pipeline.monitor.performance.window_size
        joined = session.scalar(
            sa.select(sa.func.max(MonitorFeedback.version_seq)).where(
                MonitorFeedback.model == model, MonitorFeedback.version == version
            )
        )
        if joined is None:
            return
        last = session.scalar(
            sa.select(sa.func.max(PerformanceReport.version_window)).where(
                PerformanceReport.model == model, PerformanceReport.version == version
            )
        )
        k = 0 if last is None else int(last) + 1
        while (k + 1) * size <= int(joined) + 1:
            self._close_performance_window(session, pipeline, version, k)
            k += 1

    def _close_performance_window(
        self, session: Session, pipeline: PipelineConfig, version: int, version_window: int
    ) -> None:
        model = pipeline.model.name
        spec = pipeline.monitor.performance
        size = spec.window_size
        rows = session.execute(
            sa.select(
                MonitorFeedback.actual,
                MonitorFeedback.prediction,
                MonitorObservation.features,
                MonitorObservation.event_time,
            )
            .join(MonitorObservation, LABELED_PREDICTION)
            .where(
                MonitorFeedback.model == model,
                MonitorFeedback.version == version,
                MonitorFeedback.version_seq >= version_window * size,
                MonitorFeedback.version_seq < (version_window + 1) * size,
            )
            .order_by(MonitorFeedback.version_seq)
        ).all()
        metric = spec.metric or ("roc_auc" if pipeline.model.task == "classification" else "rmse")
        actual = [r.actual for r in rows]
        values: dict[str, Any] = dict(
            performance_metrics(actual, [r.prediction for r in rows], pipeline.model.task, spec.decision_threshold)
        )
        value = values.get(metric)
        degraded = is_degraded(metric, value, spec.threshold)
        threshold = spec.threshold
        guard = self._guard(session, pipeline, version, version_window, metric, value, actual, rows)
        reason = "threshold"
        if guard is not None:
            values = {**values, "guard": guard}
            if guard["tripped"]:
                degraded, reason, threshold = True, "guard", guard["threshold"]
        window_index = session.scalar(
            sa.select(sa.func.max(PerformanceReport.window_index)).where(PerformanceReport.model == model)
        )
        window_index = 0 if window_index is None else int(window_index) + 1
        event = None
        if degraded:
            assert value is not None and threshold is not None
            times = [r.event_time for r in rows]
            degradation = PerformanceDegraded(
                model=model,
                version=version,
                metric=metric,
                value=float(value),
                threshold=float(threshold),
                window_size=len(rows),
                window_start_time=_utc(min(times)),
                window_end_time=_utc(max(times)),
                previous_version=guard["previous_version"] if reason == "guard" and guard else None,
                previous_value=guard["previous_value"] if reason == "guard" and guard else None,
                reason=reason,
            )
            # A root cause, like drift: it starts a new cascade.
            event = new_event(degradation, producer=self.producer)
        session.add(
            PerformanceReport(
                model=model,
                window_index=window_index,
                window_size=len(rows),
                versions=[version],
                version=version,
                version_window=version_window,
                metric=metric,
                value=value,
                threshold=threshold,
                degraded=degraded,
                metrics=values,
                event_id=event.id if event else None,
            )
        )
        session.flush()
        for name, metric_value in values.items():
            if isinstance(metric_value, float):
                metrics.PERFORMANCE.labels(model=model, metric=name).set(metric_value)
        metrics.PERFORMANCE_WINDOWS.labels(model=model, degraded=str(degraded).lower()).inc()
        log.info(
            "monitor: %s v%d performance window %d: %s=%s%s",
            model,
            version,
            version_window,
            metric,
            value,
            f" DEGRADED ({reason})" if degraded else "",
        )
        if event is not None:
            self.publish(event)

    def _guard(
        self,
        session: Session,
        pipeline: PipelineConfig,
        version: int,
        version_window: int,
        metric: str,
        value: float | None,
        actual: list[float],
        rows: Any,
    ) -> dict[str, Any] | None:
        """The previous champion scored on the new champion's first labeled window (same rows); None when there is
        nothing to compare (guard off, not the first window, first version, a rollback, no value)."""
        guard = pipeline.triggers.policy.guard
        if not guard.enabled or version_window != 0 or value is None:
            return None
        current = session.get(MonitorVersion, (pipeline.model.name, version))
        if current is None or current.rollback or current.previous_version is None:
            return None
        previous = session.get(MonitorVersion, (pipeline.model.name, current.previous_version))
        if previous is None:
            return None
        try:
            artifact = ModelArtifact.from_bytes(
                self.store.get_bytes(self.store.key_of(previous.artifact_uri)), previous.artifact_sha256
            )
            features = window_frame([r.features for r in rows], pipeline)
            scores = artifact.predict(features)
        except Exception as exc:  # an unreadable artifact must not stop the monitor: no guard, said why
            log.warning(
                "monitor: guard of %s v%d skipped: v%d cannot score (%s)",
                pipeline.model.name,
                version,
                previous.version,
                exc,
            )
            return None
        spec = pipeline.monitor.performance
        previous_value = performance_metrics(actual, scores, pipeline.model.task, spec.decision_threshold).get(metric)
        if previous_value is None:
            return None
        maximize = metric in MAXIMIZED_METRICS
        threshold = previous_value - guard.max_drop if maximize else previous_value + guard.max_drop
        return {
            "previous_version": int(previous.version),
            "previous_value": float(previous_value),
            "value": float(value),
            "max_drop": guard.max_drop,
            "threshold": float(threshold),
            "tripped": bool(value < threshold if maximize else value > threshold),
        }

    # --- state -------------------------------------------------------------------------------------------

    def _load_watch(self, pipeline: PipelineConfig, version: int, dataset_version_id: str, uri: str) -> Watch:
        reference = read_reference(
            self.store, uri, pipeline.feature_names, pipeline.monitor.reference_rows, pipeline.model.seed
        )
        model = pipeline.model.name
        watch = Watch(
            model=model,
            version=version,
            dataset_version_id=dataset_version_id,
            feature_set_uri=uri,
            reference=reference,
            reference_categories={
                f.name: set(_category_values(reference[f.name])) for f in pipeline.features if f.kind == "categorical"
            },
        )
        of_version = (MonitorObservation.model == model, MonitorObservation.version == version)
        with self.Session() as session:
            last_seq, stream_time = session.execute(
                sa.select(sa.func.max(MonitorObservation.seq), sa.func.max(MonitorObservation.event_time)).where(
                    *of_version
                )
            ).one()
            reports = session.execute(
                sa.select(DriftReport.window_index, DriftReport.window_start, DriftReport.window_end)
                .where(DriftReport.model == model, DriftReport.version == version)
                .order_by(DriftReport.window_index)
            ).all()
            if reports:
                first = reports[0]
                column = (
                    MonitorObservation.seq if pipeline.monitor.window_by == "count" else MonitorObservation.event_time
                )
                if first.window_start is not None and first.window_end is not None:
                    baseline = session.scalars(
                        sa.select(MonitorObservation.prediction)
                        .where(*of_version, column >= first.window_start, column < first.window_end)
                        .order_by(MonitorObservation.seq)
                    ).all()
                    watch.baseline_predictions = np.array(baseline, dtype="float64")
        watch.next_seq = 0 if last_seq is None else int(last_seq) + 1
        watch.stream_time = -math.inf if stream_time is None else float(stream_time)
        watch.closed_through = int(reports[-1].window_index) if reports else None
        return watch

    def _watch(self, model: str) -> Watch | None:
        with self._lock:
            watch = self._watches.get(model)
            if watch is not None or model in self._restored:
                return watch
            self._restored.add(model)
        with self.Session() as session:
            row = session.get(MonitoredModel, model)
        if row is None or model not in self.pipelines:
            return None
        watch = self._load_watch(self.pipelines[model], row.version, row.dataset_version_id, row.feature_set_uri)
        log.info(
            "monitor: restored watch of %s v%d after a restart (%d predictions stored, last window %s)",
            model,
            watch.version,
            watch.next_seq,
            watch.closed_through,
        )
        with self._lock:
            self._watches.setdefault(model, watch)
            return self._watches[model]

    def _watch_after_asking(self, model: str, version: int, watch: Watch | None) -> Watch | None:
        """The watch once the registry was asked whether ``version`` is the champion now (at most once per
        ``CHAMPION_ASK_SECONDS`` per version: the rows of a request come together, and a version's late predictions
        after a switch are many). A registry that does not answer leaves the watch as it is."""
        if self.ask_champion is None:
            return watch
        now = time.monotonic()
        with self._lock:
            asked = self._asked.get((model, version))
            if asked is not None and now - asked < CHAMPION_ASK_SECONDS:
                return watch
            self._asked[(model, version)] = now
        try:
            self.ask_champion(model)
        except DriftloopError as exc:
            log.warning("monitor: v%d of %s is not watched and the registry did not answer: %s", version, model, exc)
            return watch
        return self._watch(model)

    def _fill(self, pipeline: PipelineConfig, watch: Watch) -> int:
        """Predictions stored in the window that closes next (count windows), or since its start (time)."""
        spec = pipeline.monitor
        k = 0 if watch.closed_through is None else watch.closed_through + 1
        start = k * spec.window_hop
        if spec.window_by == "count":
            return max(0, watch.next_seq - int(start))
        with self.Session() as session:
            return int(
                session.scalar(
                    sa.select(sa.func.count()).where(
                        MonitorObservation.model == watch.model,
                        MonitorObservation.version == watch.version,
                        MonitorObservation.event_time >= (start if watch.closed_through is not None else -math.inf),
                    )
                )
                or 0
            )

    # --- queries (API) -----------------------------------------------------------------------------------

    def status(self, model: str) -> dict[str, Any]:
        pipeline = pipeline_for_model(self.pipelines, model)
        watch = self._watch(model)
        spec = pipeline.monitor
        with self._lock:
            return {
                "model": model,
                "version": watch.version if watch else None,
                "reference_dataset_version_id": watch.dataset_version_id if watch else None,
                "feature_set_uri": watch.feature_set_uri if watch else None,
                "reference_rows": len(watch.reference) if watch else 0,
                "window_by": spec.window_by,
                "window_length": spec.window_length,
                "window_hop": spec.window_hop,
                "window_index": (0 if watch.closed_through is None else watch.closed_through + 1) if watch else None,
                "window_fill": self._fill(pipeline, watch) if watch else 0,
                "predictions_stored": watch.next_seq if watch else 0,
                "window_size": spec.window_size,
                "alpha": spec.alpha,
                "correction": spec.correction,
                "min_drifted_features": spec.min_drifted_features,
                "psi_threshold": spec.psi_threshold,
                "wasserstein_threshold": spec.wasserstein_threshold,
                "performance": spec.performance.model_dump(),
            }

    def _drift_rows(self, model: str, limit: int, drifted_only: bool = False) -> list[DriftReport]:
        pipeline_for_model(self.pipelines, model)
        query = sa.select(DriftReport).where(DriftReport.model == model)
        if drifted_only:
            query = query.where(DriftReport.drifted.is_(True))
        query = query.order_by(DriftReport.version.desc(), DriftReport.window_index.desc()).limit(limit)
        with self.Session() as session:
            return list(session.scalars(query).all())

    def reports(self, model: str, limit: int, drifted_only: bool = False) -> list[dict[str, Any]]:
        return [
            {
                "model": r.model,
                "version": r.version,
                "window_index": r.window_index,
                "window_start": r.window_start,
                "window_end": r.window_end,
                "window_size": r.window_size,
                "drifted": r.drifted,
                "drifted_features": [t["feature"] for t in r.tests if t["drifted"]],
                "tests": r.tests,
                "prediction_drift": r.prediction_test,
                "event_id": r.event_id,
                "created_at": r.created_at.isoformat(),
            }
            for r in self._drift_rows(model, limit, drifted_only)
        ]

    def quality_reports(self, model: str, limit: int) -> list[dict[str, Any]]:
        return [
            {
                "model": r.model,
                "version": r.version,
                "window_index": r.window_index,
                "window_start": r.window_start,
                "window_end": r.window_end,
                "window_size": r.window_size,
                "quality": r.quality,
                "created_at": r.created_at.isoformat(),
            }
            for r in self._drift_rows(model, limit)
        ]

    def performance_reports(self, model: str, limit: int, degraded_only: bool = False) -> list[dict[str, Any]]:
        pipeline_for_model(self.pipelines, model)
        query = sa.select(PerformanceReport).where(PerformanceReport.model == model)
        if degraded_only:
            query = query.where(PerformanceReport.degraded.is_(True))
        query = query.order_by(PerformanceReport.window_index.desc()).limit(limit)
        with self.Session() as session:
            rows = session.scalars(query).all()
            labeled = session.scalar(
                sa.select(sa.func.count()).where(MonitorFeedback.model == model, MonitorFeedback.seq.is_not(None))
            )
            unmatched = session.scalar(
                sa.select(sa.func.count()).where(MonitorFeedback.model == model, MonitorFeedback.seq.is_(None))
            )
        return [
            {
                "model": r.model,
                "window_index": r.window_index,
                "window_size": r.window_size,
                "version": r.version,
                "version_window": r.version_window,
                "versions": r.versions,
                "metric": r.metric,
                "value": r.value,
                "threshold": r.threshold,
                "degraded": r.degraded,
                "metrics": r.metrics,
                "event_id": r.event_id,
                "created_at": r.created_at.isoformat(),
                "labeled_total": labeled,
                "unmatched_feedback": unmatched,
            }
            for r in rows
        ]


def feature_row(inputs: dict[str, Any], pipeline: PipelineConfig) -> dict[str, Any]:
    """The model's features for one prediction's raw inputs, by the one feature function (its one-row form when it
    is sure to give the same values: a one-row DataFrame cost milliseconds of each logged prediction)."""
    row = row_features(inputs, pipeline)
    if row is not None:
        return row
    frame = compute_features(pd.DataFrame([inputs]), pipeline, keep_keys=False)
    return {name: frame[name].iloc[0] for name in pipeline.feature_names}


def window_frame(rows: list[dict[str, Any]], pipeline: PipelineConfig) -> pd.DataFrame:
    """A window's feature rows (as stored, JSON) as a frame: numeric features as floats (null: NaN)."""
    frame = pd.DataFrame(rows, columns=pipeline.feature_names)
    for feature in pipeline.features:
        if feature.kind == "numeric":
            frame[feature.name] = pd.to_numeric(frame[feature.name], errors="coerce").astype("float64")
    return frame


def window_quality(
    inputs: list[dict[str, Any]],
    window: pd.DataFrame,
    pipeline: PipelineConfig,
    reference_categories: dict[str, set[str]],
) -> dict[str, Any]:
    """Data quality of a window of live inputs: nulls per stream field, values out of the pipeline's ranges or
    allowed values, and categories of categorical features the reference never had."""
    n = len(inputs)
    skip = {pipeline.stream.label, pipeline.stream.event_time}
    fields: dict[str, dict[str, Any]] = {}
    for name in pipeline.stream.field_names:
        if name in skip:
            continue
        nulls = sum(1 for row in inputs if row.get(name) is None)
        fields[name] = {"nulls": nulls, "null_rate": nulls / n if n else 0.0, "out_of_range": 0, "not_allowed": 0}
    for rule in pipeline.quality:
        if rule.field not in fields:
            continue
        values: list[Any] = [row.get(rule.field) for row in inputs if row.get(rule.field) is not None]
        if isinstance(rule, RangeRule):
            bad = 0
            for value in values:
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    bad += 1
                    continue
                if (rule.min is not None and number < rule.min) or (rule.max is not None and number > rule.max):
                    bad += 1
            fields[rule.field]["out_of_range"] += bad
        elif isinstance(rule, AllowedValuesRule):
            allowed = {str(v) for v in rule.values}
            fields[rule.field]["not_allowed"] += sum(1 for v in values if str(v) not in allowed)
    unseen: dict[str, dict[str, Any]] = {}
    for feature, known in reference_categories.items():
        # Nulls are counted per field above, not as an unseen category.
        values = [v for v in _category_values(window[feature]) if v not in known and v != MISSING_CATEGORY]
        if values:
            unseen[feature] = {"count": len(values), "values": sorted(set(values))[:MAX_LISTED_VALUES]}
    return {
        "rows": n,
        "fields": fields,
        "unseen_categories": unseen,
        "totals": {
            "nulls": sum(f["nulls"] for f in fields.values()),
            "out_of_range": sum(f["out_of_range"] for f in fields.values()),
            "not_allowed": sum(f["not_allowed"] for f in fields.values()),
            "unseen_category": sum(u["count"] for u in unseen.values()),
        },
    }


def _category_values(series: pd.Series) -> list[str]:
    return [MISSING_CATEGORY if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in series]


def _utc(epoch_seconds: float) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, tz=UTC)


def _json_value(value: Any) -> Any:
    """A JSON-safe scalar: numpy scalars as Python ones, NaN/inf as null (PostgreSQL json rejects them)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return value
