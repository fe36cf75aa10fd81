"""Event handlers of the training service: a TrainingRequested event becomes one run.

A run decides what it trains on when it starts: the newest usable dataset version (or the pinned one), the rows
after a located change, the feedback labels received so far. It is skipped (state ``skipped``, with the reason)
when another run of the model already trained on exactly that data and configuration (the same fingerprint). A
run interrupted by a crash of the service is executed again once at the next start (``resume_interrupted``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from driftloop.clients.db.models import Run
from driftloop.clients.http import ServiceClient
from driftloop.clients.objectstore import ObjectStore, open_object_store, sha256_bytes
from driftloop.contracts import layout
from driftloop.contracts.events import Event, new_event
from driftloop.contracts.payloads import FeaturesMaterialized, TrainingCompleted, TrainingRequested
from driftloop.contracts.pipeline import PipelineConfig, pipeline_for_model
from driftloop.contracts.settings import Settings
from driftloop.errors import DriftloopError, NotFoundError
from driftloop.runtime.service import Runtime

from .featuresets import ResolvedFeatureSet, resolve_feature_set, resolve_for_request, rows_since
from .fit import FitJob, FitResult, RunAborted, TrainingFailed
from .hpo import SearchResult, search_on_ray
from .labels import collect_feedback_labels, labels_digest
from .provenance import code_version, environment, peak_rss_mb
from .raycluster import fit_on_ray
from .runs import (
    ABORTED,
    COMPLETED,
    FAILED,
    RUNNING,
    SERVICE,
    SKIPPED,
    RunTracker,
    abort_flag,
    request_of,
    training_fingerprint,
)

log = logging.getLogger(__name__)

# Requests never skipped for identical data: a person asked (the demo's "same data" retrain shows the gate at work).
ALWAYS_RUN_TRIGGERS = frozenset({"manual", "rerun"})
# A cut on demand may wait behind a periodic cut on a busy machine (Spark): asked again after this.
CUT_ANSWER_SECONDS = 30.0
# A run waiting for post-change rows looks at the feature sets when the stream's FeaturesMaterialized is read; this
# slow poll is only the fallback (an event missed while the consumer reconnects, a feature set written by hand).
CHANGE_POLL_SECONDS = 10.0
# Until ingestion has placed the change on the stream's clock (no row landed after it yet), it is asked again after
# this: a landing, not a materialization, is what it waits for.
CHANGE_ASK_AGAIN_SECONDS = 1.0

Fitter = Callable[[Settings, FitJob, Callable[[], bool]], FitResult]
Searcher = Callable[[Settings, FitJob, Path, Callable[[str], None]], SearchResult]


class RunSkipped(DriftloopError):
    """The run has nothing new to learn: it ends in state ``skipped`` with this reason."""

    def __init__(self, reason: str, **fields: Any) -> None:
        super().__init__(reason)
        self.fields = fields


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
        # One run of a model at a time (a request's and a resumed one's), and one fit at a time in this process. A
        # run waiting for its data (rows after a change, up to model.change_wait_seconds) holds its model only: the
        # other models' runs go on meanwhile.
        self._model_locks: dict[str, threading.Lock] = {}
        self._model_locks_guard = threading.Lock()
        self._fitting = threading.Lock()
        self._interrupted: list[Run] = []
        # FeaturesMaterialized read per stream: wakes a run waiting for rows after a change.
        self._materialized = threading.Condition()
        self._materialized_seen: Counter[str] = Counter()

    def live_log(self, run_id: str) -> str | None:
        run_log = self.active_logs.get(run_id)
        return run_log.text() if run_log else None

    def aborted(self, run_id: str) -> bool:
        return abort_flag(self.runtime.settings, run_id).exists()

    def take_interrupted(self) -> list[str]:
        """At start, before consuming: the runs a previous process left active go back to pending, to be executed
        again by ``resume_interrupted`` (once; a run interrupted twice fails). Returns their ids."""
        self._interrupted = self.runs.take_interrupted()
        return [run.run_id for run in self._interrupted]

    def resume_interrupted(self, stop_event: threading.Event) -> None:
        """A service loop: execute the runs ``take_interrupted`` found, under their original requests (a
        redelivery of such a request finds its run and makes no second one)."""
        while self._interrupted and not stop_event.is_set():
            run = self._interrupted.pop(0)
            self.execute(run, request_of(run), resumed=True)

    def on_features_materialized(self, event: Event[FeaturesMaterialized]) -> None:
        """A feature set of the stream is ready: a run waiting for rows after a change looks at it now."""
        with self._materialized:
            self._materialized_seen[event.payload.stream] += 1
            self._materialized.notify_all()

    def _materialized_count(self, stream: str) -> int:
        with self._materialized:
            return self._materialized_seen[stream]

    def _wait_for_features(self, stream: str, seen: int, timeout: float) -> None:
        """Until a FeaturesMaterialized of ``stream`` newer than the ``seen``-th is read, or ``timeout``."""
        with self._materialized:
            self._materialized.wait_for(lambda: self._materialized_seen[stream] != seen, timeout)

    def on_training_requested(self, event: Event[TrainingRequested]) -> None:
        """Accept the request and execute its run here (the service executes it in its model's queue instead)."""
        run = self.accept(event)
        if run is not None:
            self.execute(run, event)

    def accept(self, event: Event[TrainingRequested]) -> Run | None:
        """The request's run, recorded (pending) before the request's offset is committed: a stop before it is
        executed leaves it to ``resume_interrupted``. None: a redelivery of a request that already has its run."""
        run = self.runs.create(event)
        if run is None:
            log.info("request %s already has a run: skipping the redelivery", event.payload.request_id)
        return run

    def execute(self, run: Run, event: Event[TrainingRequested], resumed: bool = False) -> None:
        """Execute a pending run to its end (completed, skipped, aborted, failed), after its model's earlier run."""
        with self._model_lock(run.model):
            self._execute_now(run, event, resumed)

    def _model_lock(self, model: str) -> threading.Lock:
        with self._model_locks_guard:
            return self._model_locks.setdefault(model, threading.Lock())

    def _execute_now(self, run: Run, event: Event[TrainingRequested], resumed: bool) -> None:
        asked = event.payload
        run_log = RunLog(run.run_id)
        self.active_logs[run.run_id] = run_log
        if resumed:
            run_log.note(f"attempt {run.attempts}: the previous attempt was interrupted by a stop of the service")
        run_log.note(f"run for request {asked.request_id} ({asked.trigger}): {asked.reason}")
        started = time.perf_counter()
        try:
            self._train(run.run_id, event, run_log, started)
        except RunSkipped as exc:
            run_log.note(f"SKIPPED: {exc}")
            self.runs.transition(
                run.run_id,
                SKIPPED,
                event,
                message=str(exc),
                skip_reason=str(exc),
                log_uri=self._store_log(run.model, run.run_id, run_log),
                **exc.fields,
            )
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
            if self._stopping():
                # The service is stopping (Ray goes down under the fit): interrupted, not failed. The run stays
                # active and is executed again at the next start.
                run_log.note(f"INTERRUPTED by the service's stop ({error}): executed again at the next start")
                self._store_log(run.model, run.run_id, run_log)
                return
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

    def _stopping(self) -> bool:
        stop_event = getattr(self.runtime.bus, "stop_event", None)
        return bool(stop_event is not None and stop_event.is_set())

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

    def _feature_set_rows(self, pipeline: PipelineConfig, feature_set: ResolvedFeatureSet) -> int | None:
        """Rows of a feature set, from the manifest the features service wrote with it (None: unknown)."""
        key = layout.feature_set_manifest_key(pipeline.stream.name, feature_set.version)
        try:
            rows = json.loads(self.store.get_bytes(key)).get("row_count")
        except (DriftloopError, OSError, ValueError, AttributeError):
            return None
        return rows if isinstance(rows, int) else None

    def _train(self, run_id: str, request: Event[TrainingRequested], run_log: RunLog, started: float) -> None:
        """What the run trains on, then the run. Waiting for rows after a change holds the model, not the fits; the
        other data is resolved when the fit's turn comes (the newest usable version then)."""
        asked = request.payload
        pipeline = pipeline_for_model(self.runtime.pipelines, asked.model)
        since = asked.change_started_at
        after_change: ResolvedFeatureSet | None = None
        if not asked.rerun_of and since is not None:
            needed = self._rows_needed_after_change(run_id, pipeline, request, run_log)
            after_change, since = self._await_post_change_rows(run_id, pipeline, since, run_log, needed)
        with self._fit_turn(run_log):
            params_override: dict[str, Any] | None = None
            if asked.rerun_of:
                source, pipeline = self._rerun_source(asked.rerun_of, pipeline)
                params_override = dict(source.params)
                since = _as_utc((source.request or {}).get("change_started_at"))
                feature_set = resolve_feature_set(self.store, pipeline, source.dataset_version_id)
                run_log.note(
                    f"rerun of {source.run_id}: {source.dataset_version_id}, its params {params_override}, no search"
                )
            elif after_change is not None:
                feature_set = after_change
            else:
                feature_set = resolve_for_request(self.store, pipeline, asked)
            self._train_on(run_id, request, run_log, started, pipeline, feature_set, since, params_override)

    @contextlib.contextmanager
    def _fit_turn(self, run_log: RunLog) -> Iterator[None]:
        """The process's one fit at a time; a run that waits for another model's says so in its log."""
        if not self._fitting.acquire(blocking=False):
            run_log.note("waiting for another run's fit to end (one fit at a time in the training service)")
            self._fitting.acquire()
        try:
            yield
        finally:
            self._fitting.release()

    def _train_on(
        self,
        run_id: str,
        request: Event[TrainingRequested],
        run_log: RunLog,
        started: float,
        pipeline: PipelineConfig,
        feature_set: ResolvedFeatureSet,
        since: datetime | None,
        params_override: dict[str, Any] | None,
    ) -> None:
        """The run on its data: skipped when nothing is new, else searched, fitted, stored and announced."""
        settings = self.runtime.settings
        asked = request.payload
        named = asked.dataset_version_id
        chosen = feature_set.dataset_version_id
        run_log.note(
            f"feature set {chosen} at {feature_set.uri}"
            + (f" (the request named {named}: the newest usable version is used)" if named and named != chosen else "")
        )
        labels_key, labels_hash = None, None
        if pipeline.model.labels_from == "feedback":
            labels_key, labels_hash = self._feedback_labels(run_id, pipeline, run_log)
        fingerprint = training_fingerprint(pipeline, chosen, since, labels_hash)
        # A person's request and a rerun run as asked; automatic causes with nothing new to learn are dropped.
        if not asked.rerun_of and asked.trigger not in ALWAYS_RUN_TRIGGERS:
            same = self.runs.same_training(pipeline.model.name, fingerprint, run_id)
            if same is not None:
                raise RunSkipped(
                    f"nothing new to learn: run {same.run_id} ({same.state}) already trained {pipeline.model.name} "
                    f"on {chosen} with the same configuration"
                    + (" and change window" if since else "")
                    + (" and feedback labels" if labels_hash else ""),
                    dataset_version_id=chosen,
                    feature_set_uri=feature_set.uri,
                    fingerprint=fingerprint,
                )
        provenance = {"code_version": code_version(), "environment": environment()}
        self.runs.transition(
            run_id,
            RUNNING,
            request,
            message=f"training on {chosen}" + (f" (rows from {since.isoformat()})" if since else ""),
            dataset_version_id=chosen,
            feature_set_uri=feature_set.uri,
            fingerprint=fingerprint,
            **provenance,
        )
        derived = labels_key is not None or since is not None
        training_set_key = run_file_key(pipeline.model.name, run_id, "training_set.parquet") if derived else None
        job = FitJob(
            run_id=run_id,
            pipeline=pipeline,
            object_store=settings.object_store.model_copy(update={"path": settings.object_store_path}),
            feature_set_prefix=feature_set.prefix,
            feature_set_uri=feature_set.uri,
            dataset_version_id=feature_set.dataset_version_id,
            params_override=params_override,
            labels_key=labels_key,
            train_since=since,
            pre_change_weight=pipeline.model.pre_change_weight,
            post_change_oldest_weight=pipeline.model.post_change_oldest_weight,
            training_set_key=training_set_key,
            rows=self._feature_set_rows(pipeline, feature_set),
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
        run_log.note("fitting (1 CPU)")
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
            "label": pipeline.label_column,
            "labels_from": pipeline.model.labels_from,
            "change_started_at": since.isoformat() if since else None,
            "training_set_uri": self.store.uri(training_set_key) if training_set_key else None,
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
            # The rows the model was trained and scored on: the gate scores the same holdout of them.
            feature_set_uri=self.store.uri(training_set_key) if training_set_key else feature_set.uri,
            artifact_uri=artifact_uri,
            artifact_sha256=artifact_sha256,
            metrics={k: float(v) for k, v in result.metrics.items()},
            params_json=json.dumps(result.params, sort_keys=True, default=str),
            holdout_json=json.dumps(result.holdout, sort_keys=True),
            feature_names=list(result.feature_names),
        )
        self.runtime.bus.publish(new_event(completed, producer=SERVICE, cause=request))

    # --- what a run trains on -------------------------------------------------------------------------------

    def _rows_needed_after_change(
        self, run_id: str, pipeline: PipelineConfig, request: Event[TrainingRequested], run_log: RunLog
    ) -> int:
        """``dataset.min_rows_after_change``; for a follow-up, at least ``triggers.after_change.followup_growth``
        times the rows after the change that its previous run trained on, when that run's model was promoted: a
        follow-up brought forward by a weak model learns from a window grown by that much, not from the few rows
        landed meanwhile. (One answering a champion the gate kept, its previous model rejected, goes at once.)"""
        needed = pipeline.dataset.min_rows_after_change
        growth = pipeline.triggers.after_change.followup_growth
        if request.payload.trigger != "followup" or growth <= 1:
            return needed
        previous = self.runs.rows_after_change_served(run_id, request)
        if previous is None:
            return needed
        grown = max(needed, math.ceil(previous * growth))
        run_log.note(
            f"follow-up: the change's previous model (promoted) trained on {previous} rows after it; waiting for "
            f"{grown} (triggers.after_change.followup_growth {growth:g})"
        )
        return grown

    def _await_post_change_rows(
        self, run_id: str, pipeline: PipelineConfig, since: datetime, run_log: RunLog, needed: int
    ) -> tuple[ResolvedFeatureSet, datetime | None]:
        """The newest feature set with ``needed`` rows at or after the change, once there is one, and the change to
        train from: ingestion is asked for a cut on demand, then the feature sets are watched
        (``model.change_wait_seconds`` at most). None by then: the newest feature set with
        ``dataset.min_rows_after_change`` such rows, else (e.g. the stream's event times run on another clock than
        the predictions the change was seen in) the newest feature set, all of its rows."""
        least = pipeline.dataset.min_rows_after_change
        run_log.note(
            f"change at {since.isoformat()}: waiting for {needed} rows after it"
            + (" (dataset.min_rows_after_change)" if needed == least else "")
        )
        deadline = time.monotonic() + pipeline.model.change_wait_seconds
        asked_for_cut = False
        # The version ingestion cut for this run: an older feature set, even with enough rows, is what an earlier run
        # of the same change trained on (a follow-up brought forward would learn nothing new and be skipped).
        cut_for_run: int | None = None
        stream = pipeline.stream.name
        while True:
            # Read before looking: a feature set materialized meanwhile ends the wait below at once.
            seen = self._materialized_count(stream)
            try:
                newest: ResolvedFeatureSet | None = resolve_feature_set(self.store, pipeline, None)
            except NotFoundError:
                newest = None
            if not asked_for_cut:
                # The change was seen in predictions (the platform's clock): ingestion says where it is in the
                # stream's event time (the earliest event time landed from then on), once a row has landed after it.
                placed = self._ask_cut_after_change(pipeline, since, needed, run_log)
                if placed is not None:
                    event_since, cut_for_run = placed
                    asked_for_cut = True
                    if event_since != since:
                        run_log.note(f"the change is at {event_since.isoformat()} in the stream's event time")
                        since = event_since
            rows = rows_since(self.store, pipeline, newest, since) if newest is not None else 0
            made = cut_for_run is None or (newest is not None and newest.version >= cut_for_run)
            if newest is not None and rows >= needed and made:
                run_log.note(f"{newest.dataset_version_id} has {rows} rows at or after the change")
                return newest, since
            if self.aborted(run_id):
                raise RunAborted("aborted while waiting for rows after the change")
            if time.monotonic() >= deadline and newest is not None and rows >= least:
                missing = (
                    f"not the {needed} waited for"
                    if rows < needed
                    else f"the version cut for this run (v{cut_for_run}) was not materialized"
                )
                run_log.note(
                    f"{newest.dataset_version_id} has {rows} rows at or after the change; {missing} within "
                    f"model.change_wait_seconds={pipeline.model.change_wait_seconds:g}: training on it"
                )
                return newest, since
            if time.monotonic() >= deadline and newest is not None:
                run_log.note(
                    f"only {rows} rows at or after the change ({since.isoformat()}) in {newest.dataset_version_id} "
                    f"after model.change_wait_seconds={pipeline.model.change_wait_seconds:g}: training on all of it"
                )
                return newest, None
            if time.monotonic() >= deadline:
                where = "no feature set"
                raise TrainingFailed(
                    f"only {rows} rows at or after the change ({since.isoformat()}) in {where}; {least} needed "
                    f"(dataset.min_rows_after_change) within model.change_wait_seconds="
                    f"{pipeline.model.change_wait_seconds:g}"
                )
            self._wait_for_features(stream, seen, CHANGE_POLL_SECONDS if asked_for_cut else CHANGE_ASK_AGAIN_SECONDS)

    def _ask_cut_after_change(
        self, pipeline: PipelineConfig, since: datetime, needed: int, run_log: RunLog
    ) -> tuple[datetime, int | None] | None:
        """Ask ingestion to cut a version once enough rows landed after the change, a point on the arrival clock.
        Returns the change in the stream's event time and the version cut (or found covering) for the run, if one
        was already (None: not known yet, ask again): None when no row landed after it, or when ingestion answered
        too late (busy with a Spark cut: a guess on another clock would train on the wrong rows). Unreachable
        ingestion (not deployed, down): ``since`` is taken as it is and the run waits for the periodic cuts."""
        stream = pipeline.stream.name
        body = {"since": since.isoformat(), "min_rows": needed, "clock": "arrival"}
        try:
            with ServiceClient("ingestion", self.runtime.settings, timeout=CUT_ANSWER_SECONDS, retries=0) as ingestion:
                answer = ingestion.post(f"/v1/streams/{stream}/datasets", json=body)
        except DriftloopError as exc:
            if getattr(exc, "code", None) == "timeout":
                run_log.note(f"cut on demand after the change not answered yet ({exc}): asking again")
                return None
            run_log.note(f"cut on demand after the change not made ({exc}): waiting for the periodic cuts")
            return since, None
        if answer.get("since") is None:
            return None
        run_log.note(f"cut on demand after the change: {json.dumps(answer, default=str)[:300]}")
        version = (answer.get("version") or {}).get("version")
        return datetime.fromisoformat(answer["since"]), int(version) if version is not None else None

    def _feedback_labels(self, run_id: str, pipeline: PipelineConfig, run_log: RunLog) -> tuple[str, str]:
        """The feedback labels received so far, stored with the run (a fixed snapshot): their key and digest."""
        labels = collect_feedback_labels(self.runtime.Session, pipeline, cutoff=datetime.now(tz=UTC))
        if labels.empty:
            raise TrainingFailed(
                f"model {pipeline.model.name!r} takes its labels from feedback and has none yet: post outcomes to "
                f"/v1/models/{pipeline.model.name}/feedback"
            )
        key = run_file_key(pipeline.model.name, run_id, "feedback_labels.parquet")
        sink = io.BytesIO()
        labels.to_parquet(sink, index=False)
        self.store.put_bytes(key, sink.getvalue())
        run_log.note(f"{len(labels)} feedback labels (one per labelled prediction) stored at {self.store.uri(key)}")
        return key, labels_digest(labels)


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    parsed = value if isinstance(value, datetime) else pd.Timestamp(value).to_pydatetime()
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed
