"""Event handlers of the training service: a TrainingRequested event becomes one run."""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from driftloop.clients.db.models import Run
from driftloop.clients.objectstore import ObjectStore, open_object_store, sha256_bytes
from driftloop.contracts import layout
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import TrainingCompleted, TrainingRequested
from driftloop.contracts.pipeline import PipelineConfig, pipeline_for_model
from driftloop.contracts.settings import Settings
from driftloop.errors import DriftloopError, NotFoundError
from driftloop.runtime.service import Runtime

from .featuresets import resolve_feature_set
from .fit import FitJob, FitResult, RunAborted, TrainingFailed
from .hpo import SearchResult, search_on_ray
from .provenance import code_version, environment, peak_rss_mb
from .raycluster import fit_on_ray
from .runs import ABORTED, COMPLETED, FAILED, RUNNING, SERVICE, RunTracker, abort_flag

log = logging.getLogger(__name__)

Fitter = Callable[[Settings, FitJob, Callable[[], bool]], FitResult]
Searcher = Callable[[Settings, FitJob, Path, Callable[[str], None]], SearchResult]


def run_file_key(model: str, run_id: str, name: str) -> str:
    """Where a run's files live: beside its model artifact and log."""
    return f"{layout.model_artifact_key(model, run_id).rsplit('/', 1)[0]}/{name}"


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
    def __init__(
        self,
        runtime: Runtime,
        store: ObjectStore | None = None,
        fitter: Fitter = fit_on_ray,
        searcher: Searcher = search_on_ray,
    ) -> None:
        self.runtime = runtime
        self.store = store or open_object_store(runtime.settings)
        self.runs = RunTracker(runtime)
        self.fitter = fitter
        self.searcher = searcher
        self.active_logs: dict[str, RunLog] = {}

    def live_log(self, run_id: str) -> str | None:
        run_log = self.active_logs.get(run_id)
        return run_log.text() if run_log else None

    def aborted(self, run_id: str) -> bool:
        return abort_flag(self.runtime.settings, run_id).exists()

    def on_training_requested(self, event: Event[TrainingRequested]) -> None:
        asked = event.payload
        run = self.runs.create(event)
        if run is None:
            log.info("request %s already has a run: skipping the redelivery", asked.request_id)
            return
        run_log = RunLog(run.run_id)
        self.active_logs[run.run_id] = run_log
        run_log.note(f"run for request {asked.request_id} ({asked.trigger}): {asked.reason}")
        started = time.perf_counter()
        try:
            self._train(run.run_id, event, run_log, started)
        except RunAborted as exc:
            run_log.note(f"ABORTED: {exc}")
            self.runs.transition(
                run.run_id,
                ABORTED,
                event,
                message=str(exc),
                error=str(exc),
                log_uri=self._store_log(run.model, run.run_id, run_log),
                resources={"wall_seconds": round(time.perf_counter() - started, 3)},
            )
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
            abort_flag(self.runtime.settings, run.run_id).unlink(missing_ok=True)

    def _store_log(self, model: str, run_id: str, run_log: RunLog) -> str | None:
        try:
            return self.store.put_bytes(layout.run_log_key(model, run_id), run_log.text().encode())
        except Exception:
            log.exception("%s: storing the run log failed", run_id)
            return None

    def _store_file(self, model: str, run_id: str, name: str, data: bytes) -> dict[str, Any]:
        uri = self.store.put_bytes(run_file_key(model, run_id, name), data)
        return {"uri": uri, "sha256": sha256_bytes(data), "bytes": len(data)}

    def _rerun_source(self, source_id: str, pipeline: PipelineConfig) -> tuple[Run, PipelineConfig]:
        """The run a rerun reproduces, and the pipeline as that run saw it: its seed and holdout, no search."""
        with self.runtime.Session() as session:
            source = session.get(Run, source_id)
        if source is None:
            raise NotFoundError(f"rerun of {source_id!r}: no such run")
        if source.state != COMPLETED or not source.dataset_version_id:
            raise TrainingFailed(f"rerun of {source_id}: only a completed run is re-executed (it is {source.state})")
        if source.model != pipeline.model.name:
            raise TrainingFailed(f"rerun of {source_id}: it trained {source.model!r}, not {pipeline.model.name!r}")
        recorded_features = (source.artifacts or {}).get("features.json")
        if recorded_features is not None:
            features = json.loads(self.store.get_bytes(self.store.key_of(recorded_features["uri"])))["features"]
            if [f["name"] for f in features] != pipeline.feature_names:
                raise TrainingFailed(
                    f"rerun of {source_id}: the pipeline's features {pipeline.feature_names} differ from the run's "
                    f"{[f['name'] for f in features]}: it cannot be reproduced with this config"
                )
        holdout = source.holdout or {}
        model = pipeline.model.model_copy(
            update={
                "search": None,
                "seed": holdout.get("seed", pipeline.model.seed),
                "holdout_fraction": holdout.get("fraction", pipeline.model.holdout_fraction),
            }
        )
        return source, pipeline.model_copy(update={"model": model})

    def _train(self, run_id: str, request: Event[TrainingRequested], run_log: RunLog, started: float) -> None:
        settings = self.runtime.settings
        asked = request.payload
        pipeline = pipeline_for_model(self.runtime.pipelines, asked.model)
        dataset_version_id = asked.dataset_version_id
        params_override: dict[str, Any] | None = None
        if asked.rerun_of:
            source, pipeline = self._rerun_source(asked.rerun_of, pipeline)
            dataset_version_id, params_override = source.dataset_version_id, dict(source.params)
            run_log.note(f"rerun of {source.run_id}: {dataset_version_id}, its params {params_override}, no search")
        feature_set = resolve_feature_set(self.store, pipeline, dataset_version_id)
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
            params_override=params_override,
        )
        search = pipeline.model.search
        cpus = 1
        search_result: SearchResult | None = None
        if search is not None:
            cpus = search.concurrency
            run_log.note(f"searching hyperparameters on Ray Tune ({search.trials} trials, {search.concurrency} CPUs)")
            search_result = self.searcher(settings, job, abort_flag(settings, run_id), run_log.note)
            job = replace(job, params_override=search_result.best_params)
        if self.aborted(run_id):
            raise RunAborted("aborted before the fit")
        run_log.note("fitting on Ray (1 CPU)")
        result = self.fitter(settings, job, lambda: self.aborted(run_id))
        run_log.extend(result.log)
        model_name = pipeline.model.name
        artifact_sha256 = sha256_bytes(result.artifact)
        artifact_uri = self.store.put_bytes(layout.model_artifact_key(model_name, run_id), result.artifact)
        run_log.note(f"artifact {artifact_uri} sha256 {artifact_sha256}")
        artifacts: dict[str, Any] = {
            "model.zip": {"uri": artifact_uri, "sha256": artifact_sha256, "bytes": len(result.artifact)}
        }
        features = [f.model_dump(exclude_defaults=True) | {"name": f.name} for f in pipeline.features]
        artifacts["features.json"] = self._store_file(
            model_name, run_id, "features.json", json.dumps({"features": features}, indent=2).encode()
        )
        manifest_key = layout.feature_set_manifest_key(pipeline.stream.name, feature_set.version)
        training_set = {
            "dataset_version_id": feature_set.dataset_version_id,
            "feature_set_uri": feature_set.uri,
            "manifest_sha256": sha256_bytes(self.store.get_bytes(manifest_key))
            if self.store.exists(manifest_key)
            else None,
            "label": pipeline.stream.label,
            "train_rows": result.train_rows,
            "holdout": result.holdout,
        }
        artifacts["training_set.json"] = self._store_file(
            model_name, run_id, "training_set.json", json.dumps(training_set, indent=2).encode()
        )
        for name, png in result.plots.items():
            artifacts[name] = self._store_file(model_name, run_id, name, png)
        if search_result is not None:
            artifacts["trials.json"] = self._store_file(
                model_name, run_id, "trials.json", json.dumps(search_result.trials, indent=2, default=str).encode()
            )
        resources = {
            "cpus": cpus,
            "wall_seconds": round(time.perf_counter() - started, 3),
            "fit_seconds": result.fit_seconds,
            "search_seconds": search_result.summary["seconds"] if search_result else None,
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
            trials=search_result.trials if search_result else None,
            search=search_result.summary if search_result else None,
            artifacts=artifacts,
            log_uri=self._store_log(model_name, run_id, run_log),
        )
        completed = TrainingCompleted(
            run_id=run_id,
            request_id=asked.request_id,
            model=model_name,
            trigger=asked.trigger,
            dataset_version_id=feature_set.dataset_version_id,
            feature_set_uri=feature_set.uri,
            artifact_uri=artifact_uri,
            artifact_sha256=artifact_sha256,
            metrics={k: float(v) for k, v in result.metrics.items()},
            params_json=json.dumps(result.params, sort_keys=True, default=str),
            holdout_json=json.dumps(result.holdout, sort_keys=True),
            feature_names=list(result.feature_names),
        )
        self.runtime.bus.publish(new_event(completed, producer=SERVICE, cause=request))
