"""Support for the training tests of every model family: each family's parameters, its pipeline, and a fit."""

from __future__ import annotations

from pathlib import Path

from fit_support import REPO, write_feature_set

from driftloop.clients.objectstore import LocalObjectStore
from driftloop.contracts import layout
from driftloop.contracts.pipeline import PipelineConfig, parse_pipeline
from driftloop.contracts.settings import ObjectStoreSettings
from driftloop.services.training.fit import FitJob, FitResult, fit_feature_set

FAMILY_PARAMS = {
    "lightgbm": "{num_leaves: 7, n_estimators: 30}",
    "xgboost": "{max_depth: 3, n_estimators: 30}",
    "sklearn_linear": "{}",
    "sklearn_random_forest": "{n_estimators: 20, max_depth: 5}",
}


def pipeline_of(family: str, task: str, extra: str = "") -> PipelineConfig:
    text = (REPO / "pipelines" / "transactions.yaml").read_text()
    text = text.replace("family: lightgbm", f"family: {family}").replace("task: classification", f"task: {task}")
    start = text.index("  params:")
    end = text.index("\n", start)
    text = text[:start] + f"  params: {FAMILY_PARAMS[family]}" + text[end:]
    if task == "regression":
        # The amount is a fine regression target; the gate metric must then be a regression metric.
        text = text.replace("metric: roc_auc", "metric: rmse").replace("direction: maximize", "direction: minimize")
        text = text.replace("  - {name: amount}\n", "").replace('  - {name: log_amount, expr: "log1p(amount)"}\n', "")
        text = text.replace("label: is_fraud", "label: amount").replace("first_version_threshold: 0.6", "")
        text = text.replace("  - {rule: allowed_values, field: is_fraud, values: [0, 1]}\n", "")
    text = text.replace("  seed: 42\n", "  seed: 42\n" + extra)
    return parse_pipeline(text)


def fit(tmp_path: Path, cfg: PipelineConfig) -> tuple[FitResult, LocalObjectStore, str]:
    store = LocalObjectStore(tmp_path)
    write_feature_set(store, cfg, 1, 900)
    prefix = layout.feature_set_prefix(cfg.stream.name, 1)
    job = FitJob("run-f", cfg, ObjectStoreSettings(type="local", path=tmp_path), prefix, store.uri(prefix), "tx@v1")
    return fit_feature_set(job), store, prefix
