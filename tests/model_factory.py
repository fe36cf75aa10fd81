"""Small real LightGBM models and feature sets for the registry and serving tests (no training service)."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from driftloop.clients.objectstore import ObjectStore
from driftloop.contracts.artifact import ModelArtifact
from driftloop.contracts.evaluation import holdout_mask
from driftloop.contracts.featuredefs import compute_features
from driftloop.contracts.layout import feature_set_prefix, model_artifact_key
from driftloop.contracts.payloads import TrainingCompleted, TrainingRequested
from driftloop.contracts.pipeline import PipelineConfig, load_pipeline, parse_pipeline

REPO = Path(__file__).resolve().parents[1]
DEMO_PIPELINE = REPO / "pipelines" / "transactions.yaml"
CATEGORIES = ["grocery", "travel", "electronics", "fashion", "gaming"]


def pipeline_text(model: str, stream: str, **gate: Any) -> str:
    """The demo pipeline YAML with its own model and stream names (and gate overrides)."""
    text = DEMO_PIPELINE.read_text()
    text = text.replace("name: fraud-detector", f"name: {model}").replace("name: transactions", f"name: {stream}")
    for key, value in gate.items():
        lines = text.splitlines()
        start = lines.index("gate:")
        for i in range(start + 1, len(lines)):
            if lines[i].strip().startswith(f"{key}:"):
                lines[i] = f"  {key}: {'null' if value is None else value}"
        text = "\n".join(lines) + "\n"
    return text


def make_pipeline(model: str = "fraud-test", stream: str = "tx-test", **gate: Any) -> PipelineConfig:
    return parse_pipeline(pipeline_text(model, stream, **gate))


def write_pipeline_dir(directory: Path, model: str, stream: str, **gate: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{model}.yaml").write_text(pipeline_text(model, stream, **gate))
    load_pipeline(directory / f"{model}.yaml")  # fail early on a bad substitution
    return directory


def raw_transactions(rows: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Synthetic raw stream records whose fraud label depends on amount, hour and merchant category."""
    rng = np.random.default_rng(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    amount = rng.lognormal(4, 1, rows)
    hour = rng.integers(0, 24, rows)
    category = rng.choice(CATEGORIES, rows)
    risky = (category == "electronics") | (category == "gaming")
    logit = -3 + 1.2 * (np.log1p(amount) - 4) + 1.5 * ((hour < 5) | (hour > 22)) + 1.5 * risky
    fraud = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(
        {
            "customer_id": [f"c{i % 400}" for i in range(rows)],
            "event_time": [start + timedelta(seconds=37 * i) for i in range(rows)],
            "amount": amount,
            "age": rng.integers(18, 90, rows),
            "merchant_category": category,
            "hour": hour,
            "is_fraud": fraud,
        }
    )


def feature_frame(pipeline: PipelineConfig, rows: int = 2000, seed: int = 0) -> pd.DataFrame:
    return compute_features(raw_transactions(rows, seed), pipeline)


def train_artifact(
    pipeline: PipelineConfig, features: pd.DataFrame, *, quality: str = "good", rounds: int = 30
) -> ModelArtifact:
    """Train on the non-holdout rows. ``quality="bad"`` learns shuffled labels: close to chance on the holdout."""
    train = features[~holdout_mask(features, pipeline)]
    artifact = ModelArtifact(
        family="lightgbm",
        task="classification",
        feature_names=pipeline.feature_names,
        categories={"merchant_category": CATEGORIES},
        model=None,
        params={"quality": quality},
    )
    label = train[pipeline.stream.label].to_numpy()
    if quality == "bad":
        label = np.random.default_rng(1).permutation(label)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "num_leaves": 7, "seed": 3}
    artifact.model = lgb.train(params, lgb.Dataset(artifact.matrix(train), label=label), num_boost_round=rounds)
    return artifact


def put_feature_set(store: ObjectStore, stream: str, version: int, features: pd.DataFrame) -> str:
    """Write the feature set as Parquet under its layout prefix; returns the prefix URI (as features does)."""
    prefix = feature_set_prefix(stream, version)
    buf = io.BytesIO()
    features.to_parquet(buf, index=False)
    store.put_bytes(prefix + "part-00000.parquet", buf.getvalue())
    return store.uri(prefix)


def put_artifact(store: ObjectStore, model: str, run_id: str, artifact: ModelArtifact) -> tuple[str, str]:
    data = artifact.to_bytes()
    uri = store.put_bytes(model_artifact_key(model, run_id), data)
    return uri, hashlib.sha256(data).hexdigest()


def training_completed(
    model: str, run_id: str, artifact_uri: str, sha256: str, feature_set_uri: str, dataset_version_id: str
) -> TrainingCompleted:
    return TrainingCompleted(
        run_id=run_id,
        request_id=f"req-{run_id}",
        model=model,
        trigger="manual",
        dataset_version_id=dataset_version_id,
        feature_set_uri=feature_set_uri,
        artifact_uri=artifact_uri,
        artifact_sha256=sha256,
        metrics={"roc_auc": 0.5},
        params_json='{"num_leaves": 7}',
        holdout_json='{"fraction": 0.25, "seed": 42}',
        feature_names=["amount", "log_amount", "age", "hour", "merchant_category"],
    )


def training_requested(model: str, request_id: str = "req-test") -> TrainingRequested:
    """The request a test's TrainingCompleted answers (its cause)."""
    return TrainingRequested(request_id=request_id, model=model, trigger="manual", reason="test")
