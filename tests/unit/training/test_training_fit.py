"""The training fit without Ray: holdout stability, feature-set resolution, LightGBM fit and its artifact."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fit_support import pipeline, raw_rows, write_feature_set

from driftloop.clients.objectstore import LocalObjectStore
from driftloop.contracts import layout
from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.evaluation import all_metrics, holdout_mask
from driftloop.contracts.featuredefs import compute_features
from driftloop.contracts.settings import ObjectStoreSettings
from driftloop.errors import NotFoundError
from driftloop.services.training.featuresets import resolve_feature_set
from driftloop.services.training.fit import FitJob, TrainingFailed, fit_feature_set, model_params
from driftloop.services.training.provenance import code_version, environment


def test_holdout_is_fixed_per_rows_whatever_their_order() -> None:
    cfg = pipeline()
    frame = raw_rows(2000)
    mask = holdout_mask(frame, cfg)
    shuffled = frame.sample(frac=1.0, random_state=3)
    again = pd.Series(holdout_mask(shuffled, cfg), index=shuffled.index).sort_index().to_numpy()
    assert (mask == again).all()
    assert 0.2 < mask.mean() < 0.3  # holdout_fraction 0.25
    # Rows added later (a cumulative next version) do not move the earlier rows between splits.
    grown = pd.concat([frame, raw_rows(500, seed=9).assign(event_time=lambda f: f["event_time"] + timedelta(days=9))])
    assert (holdout_mask(grown, cfg)[: len(frame)] == mask).all()


def test_resolves_the_newest_complete_feature_set(tmp_path: Path) -> None:
    cfg = pipeline()
    store = LocalObjectStore(tmp_path)
    with pytest.raises(NotFoundError, match="no materialized feature set"):
        resolve_feature_set(store, cfg, None)
    write_feature_set(store, cfg, 1, 50)
    write_feature_set(store, cfg, 2, 50)
    write_feature_set(store, cfg, 3, 50, manifest=False)  # still being written
    assert resolve_feature_set(store, cfg, None).dataset_version_id == "tx-unit@v2"
    assert resolve_feature_set(store, cfg, "tx-unit@v1").prefix == layout.feature_set_prefix("tx-unit", 1)
    with pytest.raises(NotFoundError, match="tx-unit@v7"):
        resolve_feature_set(store, cfg, "tx-unit@v7")
    with pytest.raises(NotFoundError, match="stream 'other'"):
        resolve_feature_set(store, cfg, "other@v1")
    with pytest.raises(NotFoundError, match="not a dataset version id"):
        resolve_feature_set(store, cfg, "garbage")


def test_fit_returns_an_artifact_that_reproduces_its_holdout_metrics(tmp_path: Path) -> None:
    cfg = pipeline()
    store = LocalObjectStore(tmp_path)
    write_feature_set(store, cfg, 1, 1500)
    prefix = layout.feature_set_prefix(cfg.stream.name, 1)
    job = FitJob(
        run_id="run-unit",
        pipeline=cfg,
        object_store=ObjectStoreSettings(type="local", path=tmp_path),
        feature_set_prefix=prefix,
        feature_set_uri=store.uri(prefix),
        dataset_version_id="tx-unit@v1",
    )
    result = fit_feature_set(job)
    assert set(result.metrics) == {"roc_auc", "accuracy", "f1", "log_loss"}
    assert result.metrics["roc_auc"] > 0.6  # the label depends on amount and category
    assert result.params == model_params(cfg) and result.params["num_leaves"] == 15
    assert result.holdout["rows"] + result.train_rows == 1500 and result.holdout["seed"] == 42

    artifact = ModelArtifact.from_bytes(result.artifact)
    assert artifact.feature_names == cfg.feature_names
    assert artifact.categories["merchant_category"] == sorted(["grocery", "travel", "electronics", "fashion", "gaming"])
    assert artifact.metadata["dataset_version_id"] == "tx-unit@v1"
    frame = pq.read_table(store.local_path(prefix)).to_pandas()
    holdout = frame[holdout_mask(frame, cfg)]
    assert all_metrics("classification", holdout["is_fraud"].to_numpy(), artifact.predict(holdout)) == pytest.approx(
        result.metrics
    )


def test_fit_refuses_a_single_class_label(tmp_path: Path) -> None:
    cfg = pipeline()
    store = LocalObjectStore(tmp_path)
    features = compute_features(raw_rows(200).assign(is_fraud=0), cfg)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(features, preserve_index=False), sink)
    prefix = layout.feature_set_prefix(cfg.stream.name, 1)
    store.put_bytes(f"{prefix}part-0.parquet", sink.getvalue().to_pybytes())
    job = FitJob(
        "run-x", cfg, ObjectStoreSettings(type="local", path=tmp_path), prefix, store.uri(prefix), "tx-unit@v1"
    )
    with pytest.raises(TrainingFailed, match="single class"):
        fit_feature_set(job)


def test_provenance_names_code_and_packages() -> None:
    version = code_version()
    assert len(version.removesuffix("-dirty")) == 40 or version.startswith("driftloop ")
    env = environment()
    assert env["packages"]["lightgbm"] == "4.7.0" and env["python"].startswith("3.11")
