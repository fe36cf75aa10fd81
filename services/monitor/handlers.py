"""The monitor's event handlers: champion references, tumbling prediction windows, drift tests.

Windows live in memory: a restart starts a new (empty) window for each model. The champion being watched is
kept in the ``monitored_models`` table, so that after a restart its reference is reloaded on the next
prediction instead of monitoring silently stopping.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from driftloop.db.models import DriftReport, MonitoredModel, utcnow
from driftloop.errors import NotFoundError, ValidationFailed
from driftloop.events import Event, new_event
from driftloop.featuredefs import compute_features
from driftloop.objectstore import ObjectStore
from driftloop.pipeline import PipelineConfig, pipeline_for_model

from . import metrics
from .reference import read_reference
from .stats import WindowResult, evaluate_window

log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"


@dataclass
class Watch:
    """The champion of one model, its reference sample and the window being filled."""

    model: str
    version: int
    dataset_version_id: str
    feature_set_uri: str
    reference: pd.DataFrame
    window_index: int
    rows: list[dict[str, Any]] = field(default_factory=list)


class MonitorHandlers:
    def __init__(
        self,
        pipelines: dict[str, PipelineConfig],
        Session: sessionmaker[Session],
        store: ObjectStore,
        publish: Callable[[Event], None],
        producer: str = "monitor",
    ) -> None:
        self.pipelines = pipelines
        self.Session = Session
        self.store = store
        self.publish = publish
        self.producer = producer
        self._watches: dict[str, Watch] = {}
        # Models whose watch was looked up in the database since start (a restart reloads lazily).
        self._restored: set[str] = set()
        # The consumer thread writes, the HTTP threads read.
        self._lock = threading.Lock()

    # --- events ------------------------------------------------------------------------------------------

    def on_model_promoted(self, event: Event) -> None:
        model = event["model"]
        if event["alias"] != CHAMPION_ALIAS:
            log.info(
                "monitor: %s alias %r moved to v%s; only the champion is monitored",
                model,
                event["alias"],
                event["version"],
            )
            return
        pipeline = pipeline_for_model(self.pipelines, model)
        watch = self._load_watch(pipeline, event["version"], event["dataset_version_id"], event["feature_set_uri"])
        with self.Session.begin() as session:
            row = session.get(MonitoredModel, model)
            if row is None:
                row = MonitoredModel(model=model)
                session.add(row)
            row.version = event["version"]
            row.dataset_version_id = event["dataset_version_id"]
            row.feature_set_uri = event["feature_set_uri"]
            row.event_id = event.id
            row.updated_at = utcnow()
        with self._lock:
            self._watches[model] = watch
            self._restored.add(model)
        metrics.WINDOW_FILL.labels(model=model).set(0)
        log.info(
            "monitor: watching %s v%d, reference %s (%d rows), next window %d",
            model,
            watch.version,
            watch.dataset_version_id,
            len(watch.reference),
            watch.window_index,
        )

    def on_prediction_logged(self, event: Event) -> None:
        model = event["model"]
        watch = self._watch(model)
        if watch is None:
            metrics.PREDICTIONS_SKIPPED.labels(model=model, reason="no_reference").inc()
            return
        if event["version"] != watch.version:
            # Served by a version that is no longer (or not yet) the champion: not comparable to the reference.
            metrics.PREDICTIONS_SKIPPED.labels(model=model, reason="not_champion").inc()
            return
        pipeline = pipeline_for_model(self.pipelines, model)
        try:
            row = feature_row(event["inputs"], pipeline)
        except ValidationFailed as exc:
            metrics.PREDICTIONS_SKIPPED.labels(model=model, reason="invalid_inputs").inc()
            log.warning("monitor: prediction %s of %s has unusable inputs (%s): %s", event.id, model, exc.reason, exc)
            return
        with self._lock:
            watch.rows.append(row)
            full = len(watch.rows) >= pipeline.monitor.window_size
            if full:
                window = pd.DataFrame(watch.rows, columns=pipeline.feature_names)
                window_index = watch.window_index
                # Tumbling: the next prediction starts the next window.
                watch.rows = []
                watch.window_index += 1
            fill = len(watch.rows)
        metrics.WINDOW_FILL.labels(model=model).set(fill)
        if full:
            self._close_window(pipeline, watch, window, window_index)

    # --- windows -----------------------------------------------------------------------------------------

    def _close_window(self, pipeline: PipelineConfig, watch: Watch, window: pd.DataFrame, window_index: int) -> None:
        spec = pipeline.monitor
        result = evaluate_window(watch.reference, window, pipeline.features, spec)
        for test in result.tests:
            metrics.DRIFT_STATISTIC.labels(model=watch.model, feature=test.feature, test=test.test).set(test.statistic)
            metrics.DRIFT_ADJUSTED_P_VALUE.labels(model=watch.model, feature=test.feature).set(test.adjusted_p_value)
        metrics.WINDOWS_CLOSED.labels(model=watch.model, drifted=str(result.drifted).lower()).inc()
        event = self._drift_event(pipeline, watch, result, len(window), window_index) if result.drifted else None
        with self.Session.begin() as session:
            exists = session.scalar(
                sa.select(DriftReport.id).where(
                    DriftReport.model == watch.model,
                    DriftReport.version == watch.version,
                    DriftReport.window_index == window_index,
                )
            )
            if exists is not None:
                log.info("monitor: %s v%d window %d already reported", watch.model, watch.version, window_index)
                return
            session.add(
                DriftReport(
                    model=watch.model,
                    version=watch.version,
                    window_index=window_index,
                    window_size=len(window),
                    drifted=result.drifted,
                    tests=[t.to_dict() for t in result.tests],
                    event_id=event.id if event else None,
                )
            )
        log.info(
            "monitor: %s v%d window %d: %s",
            watch.model,
            watch.version,
            window_index,
            f"DRIFT in {result.drifted_features}" if result.drifted else "no drift",
        )
        if event is not None:
            self.publish(event)

    def _drift_event(
        self, pipeline: PipelineConfig, watch: Watch, result: WindowResult, size: int, window_index: int
    ) -> Event:
        data = {
            "model": watch.model,
            "version": watch.version,
            "reference_dataset_version_id": watch.dataset_version_id,
            "window_size": size,
            "window_index": window_index,
            "alpha": pipeline.monitor.alpha,
            "correction": pipeline.monitor.correction,
            "drifted_features": result.drifted_features,
            "tests": [t.to_dict() for t in result.tests],
        }
        # No cause: drift is a root cause and starts a new cascade.
        return new_event("DriftDetected", data, producer=self.producer)

    # --- state -------------------------------------------------------------------------------------------

    def _load_watch(self, pipeline: PipelineConfig, version: int, dataset_version_id: str, uri: str) -> Watch:
        reference = read_reference(
            self.store, uri, pipeline.feature_names, pipeline.monitor.reference_rows, pipeline.model.seed
        )
        model = pipeline.model.name
        with self.Session() as session:
            last = session.scalar(
                sa.select(sa.func.max(DriftReport.window_index)).where(
                    DriftReport.model == model, DriftReport.version == version
                )
            )
        return Watch(
            model=model,
            version=version,
            dataset_version_id=dataset_version_id,
            feature_set_uri=uri,
            reference=reference,
            window_index=0 if last is None else int(last) + 1,
        )

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
            "monitor: restored watch of %s v%d after a restart (new window %d)",
            model,
            watch.version,
            watch.window_index,
        )
        with self._lock:
            self._watches.setdefault(model, watch)
            return self._watches[model]

    # --- queries (API) -----------------------------------------------------------------------------------

    def status(self, model: str) -> dict[str, Any]:
        pipeline = pipeline_for_model(self.pipelines, model)
        watch = self._watch(model)
        with self._lock:
            return {
                "model": model,
                "version": watch.version if watch else None,
                "reference_dataset_version_id": watch.dataset_version_id if watch else None,
                "feature_set_uri": watch.feature_set_uri if watch else None,
                "reference_rows": len(watch.reference) if watch else 0,
                "window_index": watch.window_index if watch else None,
                "window_fill": len(watch.rows) if watch else 0,
                "window_size": pipeline.monitor.window_size,
                "alpha": pipeline.monitor.alpha,
                "correction": pipeline.monitor.correction,
                "min_drifted_features": pipeline.monitor.min_drifted_features,
            }

    def reports(self, model: str, limit: int, drifted_only: bool = False) -> list[dict[str, Any]]:
        if model not in self.pipelines:
            raise NotFoundError(f"unknown model {model!r}; known models: {sorted(self.pipelines)}")
        query = sa.select(DriftReport).where(DriftReport.model == model)
        if drifted_only:
            query = query.where(DriftReport.drifted.is_(True))
        query = query.order_by(DriftReport.created_at.desc(), DriftReport.id.desc()).limit(limit)
        with self.Session() as session:
            rows = session.scalars(query).all()
        return [
            {
                "model": r.model,
                "version": r.version,
                "window_index": r.window_index,
                "window_size": r.window_size,
                "drifted": r.drifted,
                "drifted_features": [t["feature"] for t in r.tests if t["drifted"]],
                "tests": r.tests,
                "event_id": r.event_id,
                "created_at": r.created_at.isoformat(),
            }
            for r in rows
        ]


def feature_row(inputs: dict[str, Any], pipeline: PipelineConfig) -> dict[str, Any]:
    """The model's features for one prediction's raw inputs, by the one feature function."""
    frame = compute_features(pd.DataFrame([inputs]), pipeline, keep_keys=False)
    return {name: frame[name].iloc[0] for name in pipeline.feature_names}
