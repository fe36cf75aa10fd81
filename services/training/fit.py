"""The fit itself: feature set Parquet -> holdout split -> the model family's fit -> artifact bytes, holdout metrics
and plots.

A plain function of picklable inputs, so it runs as a Ray task (see ``raycluster``) and in unit tests alike. It
opens the object store itself from the store settings: nothing but settings crosses to the worker.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from driftloop.clients.objectstore import ObjectStore, open_object_store
from driftloop.contracts.artifact import ModelArtifact, import_family
from driftloop.contracts.evaluation import SAMPLE_WEIGHT_COLUMN, all_metrics, holdout_mask
from driftloop.contracts.pipeline import PipelineConfig
from driftloop.contracts.settings import ObjectStoreSettings, Settings
from driftloop.errors import ConflictError, DriftloopError, NotFoundError

from .families import feature_importance, model_params, train_model
from .labels import attach_labels
from .plots import draw_plots
from .provenance import peak_rss_mb


class TrainingFailed(DriftloopError):
    """The feature set cannot be trained on (missing columns, empty split, one class, ...): the run fails."""

    default_code = "training_failed"


class RunAborted(ConflictError):
    """The run was aborted (``POST /v1/runs/{id}/abort``) while this work went on."""

    default_code = "run_aborted"


@dataclass(frozen=True)
class FitJob:
    run_id: str
    pipeline: PipelineConfig
    # With ``path`` resolved: the worker may run in another directory.
    object_store: ObjectStoreSettings
    feature_set_prefix: str
    feature_set_uri: str
    dataset_version_id: str
    # The search's best configuration (or a rerun's recorded params), over ``model.params``.
    params_override: dict[str, Any] | None = None
    # Feedback labels (``model.labels_from: feedback``): the object-store key of the run's labels table.
    labels_key: str | None = None
    # A located change: train on rows at or after it; older rows weigh ``pre_change_weight`` (0: dropped).
    train_since: datetime | None = None
    pre_change_weight: float = 0.0
    # The rows after the change weigh from this (at the change) rising linearly with event time to 1 (the newest).
    post_change_oldest_weight: float = 1.0
    # Where the fit stores the rows it trained and was scored on, when they differ from the feature set (labels
    # from feedback, a change window): the gate scores the holdout of this table.
    training_set_key: str | None = None
    # Rows of the feature set (None: unknown): a small fit need not wait for a sleeping Ray (ray.local_fit_max_rows).
    rows: int | None = None


@dataclass
class FitResult:
    artifact: bytes
    metrics: dict[str, float]
    params: dict[str, Any]
    holdout: dict[str, Any]
    feature_names: list[str]
    train_rows: int
    fit_seconds: float
    peak_rss_mb: float
    log: list[str] = field(default_factory=list)
    # name -> PNG bytes (feature importance; confusion matrix and ROC for classifiers).
    plots: dict[str, bytes] = field(default_factory=dict)
    feature_importance: dict[str, float] = field(default_factory=dict)


def change_window_weights(
    times: pd.Series, since: pd.Timestamp, pre_change_weight: float, post_change_oldest_weight: float
) -> np.ndarray | None:
    """Sample weights of a change window's rows by event time (None: all weigh 1). Rows before ``since`` weigh
    ``pre_change_weight``; rows at or after it from ``post_change_oldest_weight`` at ``since`` rising linearly to 1
    for the newest: a gradual change is still under way in the first rows after it was located, so the newest
    rows say the most about the concept to come."""
    after = (times >= since).to_numpy()
    if post_change_oldest_weight >= 1 and (pre_change_weight <= 0 or after.all()):
        return None
    weights = np.where(after, 1.0, pre_change_weight)
    if post_change_oldest_weight < 1 and after.any():
        elapsed = (times - since).dt.total_seconds().to_numpy()
        span = float(elapsed[after].max())
        if span > 0:
            ramp = post_change_oldest_weight + (1.0 - post_change_oldest_weight) * elapsed / span
            weights = np.where(after, ramp, weights)
    return weights


def open_store(object_store: ObjectStoreSettings) -> ObjectStore:
    # model_construct: no environment or config file is read in the worker, only the settings passed.
    return open_object_store(Settings.model_construct(object_store=object_store))


def read_feature_set(store: ObjectStore, prefix: str) -> pd.DataFrame:
    keys = [k for k in store.list(prefix) if k.endswith(".parquet")]
    if not keys:
        raise NotFoundError(f"no Parquet files under {store.uri(prefix)}")
    filesystem, root = store.arrow_filesystem()
    dataset = pads.dataset([f"{root}/{k}" for k in keys], filesystem=filesystem, format="parquet")
    return dataset.to_table().to_pandas()


@dataclass
class PreparedData:
    """A feature set split for training: the labelled rows of train and holdout, the artifact skeleton (family,
    features, categorical vocabularies of the training split) and how the holdout was drawn."""

    artifact: ModelArtifact
    train: pd.DataFrame
    holdout: pd.DataFrame
    y_train: np.ndarray
    y_holdout: np.ndarray
    holdout_info: dict[str, Any]
    # Per training and holdout row (a change window's weights); None: all rows weigh 1.
    w_train: np.ndarray | None = None
    w_holdout: np.ndarray | None = None
    # The labelled rows (train + holdout) when they differ from the feature set, else None.
    training_set: pd.DataFrame | None = None


def prepare_data(job: FitJob, note: Callable[[str], None]) -> PreparedData:
    pipeline = job.pipeline
    stream, task = pipeline.stream, pipeline.model.task
    store = open_store(job.object_store)
    frame = read_feature_set(store, job.feature_set_prefix)
    note(f"read {len(frame)} rows from {job.feature_set_uri}")
    label = pipeline.label_column
    needed = [stream.entity_key, stream.event_time, *pipeline.feature_names]
    if job.labels_key is None:
        needed.append(label)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise TrainingFailed(f"the feature set {job.feature_set_uri} lacks column(s) {missing}")
    derived = False
    if job.labels_key is not None:
        labels = pd.read_parquet(io.BytesIO(store.get_bytes(job.labels_key)))
        frame, attached = attach_labels(frame, labels, pipeline)
        note(f"feedback labels: {len(labels)} labelled predictions, {attached} joined to rows of the feature set")
        derived = True
    rows_after_change: int | None = None
    if job.train_since is not None:
        since = pd.Timestamp(job.train_since)
        since = since.tz_localize("UTC") if since.tzinfo is None else since
        times = pd.to_datetime(frame[stream.event_time], utc=True)
        after = (times >= since).to_numpy()
        rows_after_change = int(after.sum())
        if job.pre_change_weight <= 0:
            note(
                f"change window: {int(after.sum())} rows at or after {job.train_since.isoformat()}, "
                f"{int((~after).sum())} older rows dropped"
            )
            frame = frame[after].reset_index(drop=True)
            times = times[after].reset_index(drop=True)
        else:
            note(
                f"change window: {int(after.sum())} rows at or after {job.train_since.isoformat()}, "
                f"{int((~after).sum())} older rows weigh {job.pre_change_weight}"
            )
        weights = change_window_weights(
            times,
            since,
            job.pre_change_weight,
            job.post_change_oldest_weight,
        )
        if weights is not None:
            if job.post_change_oldest_weight < 1:
                note(
                    f"rows after the change weigh from {job.post_change_oldest_weight} (at the change) up to 1 "
                    "(the newest), by event time"
                )
            frame = frame.assign(**{SAMPLE_WEIGHT_COLUMN: weights})
        derived = True

    unlabeled = frame[label].isna()
    if unlabeled.any():
        note(f"dropped {int(unlabeled.sum())} rows without a label")
        frame = frame[~unlabeled].reset_index(drop=True)
    in_holdout = holdout_mask(frame, pipeline)
    train, holdout = frame[~in_holdout].reset_index(drop=True), frame[in_holdout].reset_index(drop=True)
    holdout_info = {
        "fraction": pipeline.model.holdout_fraction,
        "seed": pipeline.model.seed,
        "rows": len(holdout),
        "train_rows": len(train),
        "method": "hash(entity|event_time)",
    }
    if rows_after_change is not None:
        # What a follow-up of the same change grows from (``triggers.after_change.followup_growth``).
        holdout_info["rows_after_change"] = rows_after_change
    if SAMPLE_WEIGHT_COLUMN in frame.columns:
        # Scored with the rows' weights, here and at the gate (the training set carries them in this column).
        holdout_info["sample_weight_column"] = SAMPLE_WEIGHT_COLUMN
    note(f"holdout {json.dumps(holdout_info)}")
    if len(train) == 0 or len(holdout) == 0:
        raise TrainingFailed(f"too few labelled rows to train and evaluate: {len(train)} train, {len(holdout)} holdout")

    y_train = pd.to_numeric(train[label], errors="coerce").to_numpy(dtype="float64")
    y_holdout = pd.to_numeric(holdout[label], errors="coerce").to_numpy(dtype="float64")
    if task == "classification":
        classes = set(np.unique(np.concatenate([y_train, y_holdout])).tolist())
        if not classes <= {0.0, 1.0}:
            raise TrainingFailed(f"classification needs a 0/1 label {label!r}; found values {sorted(classes)}")
        if len(set(np.unique(y_train).tolist())) < 2:
            raise TrainingFailed(f"the training split has a single class of {label!r}: nothing to learn")
        y_train, y_holdout = y_train.astype(int), y_holdout.astype(int)

    categories = {
        f.name: sorted({str(v) for v in train[f.name].dropna()}) for f in pipeline.features if f.kind == "categorical"
    }
    artifact = ModelArtifact(
        family=pipeline.model.family,
        task=task,
        feature_names=pipeline.feature_names,
        categories=categories,
        model=None,
    )
    weighed = SAMPLE_WEIGHT_COLUMN in frame.columns
    w_train = train[SAMPLE_WEIGHT_COLUMN].to_numpy(dtype="float64") if weighed else None
    w_holdout = holdout[SAMPLE_WEIGHT_COLUMN].to_numpy(dtype="float64") if weighed else None
    return PreparedData(
        artifact,
        train,
        holdout,
        y_train,
        y_holdout,
        holdout_info,
        w_train=w_train,
        w_holdout=w_holdout,
        # With its weights: the gate scores the holdout the way the run did.
        training_set=frame if derived else None,
    )


def fit_feature_set(job: FitJob) -> FitResult:
    """Fit ``model.params`` (over them ``job.params_override``, the search's best configuration) on the training
    split, score the holdout, and draw the run's plots."""
    started = time.perf_counter()
    lines: list[str] = []

    def note(message: str) -> None:
        lines.append(f"{datetime.now(tz=UTC).isoformat(timespec='milliseconds')} {message}")

    pipeline = job.pipeline
    task = pipeline.model.task
    data = prepare_data(job, note)
    artifact, train, holdout = data.artifact, data.train, data.holdout
    params = model_params(pipeline, job.params_override)
    artifact.params = params
    # The artifact's own matrix: training sees exactly what serving will feed the model.
    x_train, x_holdout = artifact.model_input(train), artifact.model_input(holdout)
    note(
        f"fitting {pipeline.model.family} {task} on {len(train)} rows x {len(pipeline.feature_names)} features, "
        f"params {params}"
    )
    artifact.model = train_model(artifact, params, x_train, data.y_train, sample_weight=data.w_train)
    predictions = artifact.predict_input(x_holdout)
    metrics = all_metrics(task, data.y_holdout, predictions, data.w_holdout)
    note(f"holdout metrics {json.dumps(metrics)}")
    importance = feature_importance(artifact)
    artifact.metadata = {
        "run_id": job.run_id,
        "model": pipeline.model.name,
        "dataset_version_id": job.dataset_version_id,
        "feature_set_uri": job.feature_set_uri,
        "holdout": data.holdout_info,
        "metrics": metrics,
        "feature_importance": importance,
        "trained_at": datetime.now(tz=UTC).isoformat(),
    }
    plots = draw_plots(task, importance, data.y_holdout, predictions)
    if job.training_set_key is not None and data.training_set is not None:
        sink = io.BytesIO()
        data.training_set.to_parquet(sink, index=False)
        open_store(job.object_store).put_bytes(job.training_set_key, sink.getvalue())
        note(f"training set ({len(data.training_set)} labelled rows) stored for the gate")
    fit_seconds = round(time.perf_counter() - started, 3)
    note(f"fit done in {fit_seconds}s")
    return FitResult(
        artifact=artifact.to_bytes(),
        metrics=metrics,
        params=params,
        holdout=data.holdout_info,
        feature_names=pipeline.feature_names,
        train_rows=len(train),
        fit_seconds=fit_seconds,
        peak_rss_mb=peak_rss_mb(),
        log=lines,
        plots=plots,
        feature_importance=importance,
    )


def warm_fit_worker(models: Iterable[tuple[str, str]]) -> None:
    """What a fit loads on first use, loaded now (run as a Ray task at start, so the worker the first fit lands on
    has it): each ``(family, task)``'s model library and metrics, and the plots' matplotlib (fonts included)."""
    for family, task in sorted(set(models)):
        import_family(family)
        classification = task == "classification"
        y_true = np.array([0, 1, 0, 1] if classification else [1.0, 2.0, 3.0, 4.0])
        y_score = np.array([0.2, 0.8, 0.4, 0.6] if classification else [1.5, 2.0, 2.5, 4.0])
        all_metrics(task, y_true, y_score)
        draw_plots(task, {"a": 1.0, "b": 2.0}, y_true, y_score)
