"""Event handlers of the training service: a TrainingRequested event becomes one run."""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime

from driftloop import layout
from driftloop.errors import DriftloopError
from driftloop.events import Event, new_event
from driftloop.objectstore import ObjectStore, open_object_store, sha256_bytes
from driftloop.pipeline import pipeline_for_model
from driftloop.service import Runtime
from driftloop.settings import Settings

from .featuresets import resolve_feature_set
from .fit import FitJob, FitResult
from .provenance import code_version, environment, peak_rss_mb
from .raycluster import fit_on_ray
from .runs import COMPLETED, FAILED, RUNNING, SERVICE, RunTracker

log = logging.getLogger(__name__)

Fitter = Callable[[Settings, FitJob], FitResult]


class RunLog:
    """A run's log lines, kept in memory while it runs (served live) and stored with the run at the end."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def note(self, message: str) -> None:
        log.info("%s: %s", self.run_id, message)
        with self._lock:
            self.lines.append(f"{datetime.now(tz=UTC).isoformat(timespec='milliseconds')} {message}")

    def extend(self, lines: list[str]) -> None:
        with self._lock:
            self.lines.extend(lines)

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines) + "\n"


class TrainingHandlers:
    def __init__(self, runtime: Runtime, store: ObjectStore | None = None, fitter: Fitter = fit_on_ray) -> None:
        self.runtime = runtime
        self.store = store or open_object_store(runtime.settings)
        self.runs = RunTracker(runtime)
        self.fitter = fitter
        self.active_logs: dict[str, RunLog] = {}

    def live_log(self, run_id: str) -> str | None:
        run_log = self.active_logs.get(run_id)
        return run_log.text() if run_log else None

    def on_training_requested(self, event: Event) -> None:
        run = self.runs.create(event)
        if run is None:
            log.info("request %s already has a run: skipping the redelivery", event["request_id"])
            return
        run_log = RunLog(run.run_id)
        self.active_logs[run.run_id] = run_log
        run_log.note(f"run for request {event['request_id']} ({event['trigger']}): {event['reason']}")
        started = time.perf_counter()
        try:
            self._train(run.run_id, event, run_log, started)
        except Exception as exc:
            error = str(exc) if isinstance(exc, DriftloopError) else f"{type(exc).__name__}: {exc}"
            run_log.note(f"FAILED: {error}")
            if not isinstance(exc, DriftloopError):
                run_log.extend(traceback.format_exc().splitlines())
            self.runs.transition(
                run.run_id,
                FAILED,
                event,
                message=error,
                error=error,
                log_uri=self._store_log(run.model, run.run_id, run_log),
                resources={"wall_seconds": round(time.perf_counter() - started, 3)},
            )
        finally:
            self.active_logs.pop(run.run_id, None)

    def _store_log(self, model: str, run_id: str, run_log: RunLog) -> str | None:
        try:
            return self.store.put_bytes(layout.run_log_key(model, run_id), run_log.text().encode())
        except Exception:
            log.exception("%s: storing the run log failed", run_id)
            return None

    def _train(self, run_id: str, request: Event, run_log: RunLog, started: float) -> None:
        settings = self.runtime.settings
        pipeline = pipeline_for_model(self.runtime.pipelines, request["model"])
        feature_set = resolve_feature_set(self.store, pipeline, request.data.get("dataset_version_id"))
        run_log.note(f"feature set {feature_set.dataset_version_id} at {feature_set.uri}")
        provenance = {"code_version": code_version(), "environment": environment()}
        self.runs.transition(
            run_id,
            RUNNING,
            request,
            message=f"training on {feature_set.dataset_version_id}",
            dataset_version_id=feature_set.dataset_version_id,
            feature_set_uri=feature_set.uri,
            **provenance,
        )
        job = FitJob(
            run_id=run_id,
            pipeline=pipeline,
            object_store=settings.object_store.model_copy(update={"path": settings.object_store_path}),
            feature_set_prefix=feature_set.prefix,
            feature_set_uri=feature_set.uri,
            dataset_version_id=feature_set.dataset_version_id,
        )
        run_log.note("fitting on Ray (1 CPU)")
        result = self.fitter(settings, job)
        run_log.extend(result.log)
        artifact_sha256 = sha256_bytes(result.artifact)
        artifact_uri = self.store.put_bytes(layout.model_artifact_key(pipeline.model.name, run_id), result.artifact)
        run_log.note(f"artifact {artifact_uri} sha256 {artifact_sha256}")
        resources = {
            "cpus": 1,
            "wall_seconds": round(time.perf_counter() - started, 3),
            "fit_seconds": result.fit_seconds,
            "peak_rss_mb_worker": result.peak_rss_mb,
            "peak_rss_mb_service": peak_rss_mb(),
        }
        run_log.note(f"completed: metrics {json.dumps(result.metrics)}")
        self.runs.transition(
            run_id,
            COMPLETED,
            request,
            message=f"metrics {json.dumps(result.metrics)}",
            params=result.params,
            metrics=result.metrics,
            holdout=result.holdout,
            artifact_uri=artifact_uri,
            artifact_sha256=artifact_sha256,
            resources=resources,
            log_uri=self._store_log(pipeline.model.name, run_id, run_log),
        )
        self.runtime.bus.publish(
            new_event(
                "TrainingCompleted",
                {
                    "run_id": run_id,
                    "request_id": request["request_id"],
                    "model": pipeline.model.name,
                    "trigger": request["trigger"],
                    "dataset_version_id": feature_set.dataset_version_id,
                    "feature_set_uri": feature_set.uri,
                    "artifact_uri": artifact_uri,
                    "artifact_sha256": artifact_sha256,
                    "metrics": {k: float(v) for k, v in result.metrics.items()},
                    "params_json": json.dumps(result.params, sort_keys=True, default=str),
                    "holdout_json": json.dumps(result.holdout, sort_keys=True),
                    "feature_names": result.feature_names,
                },
                producer=SERVICE,
                cause=request,
            )
        )
