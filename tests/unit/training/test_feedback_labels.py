"""Delayed labels as training data: feedback joined point-in-time to the logged inputs of the predictions it
answers (serving's tables and the event log in SQLite), then a fit on a stream without a label field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from fit_support import raw_rows

from driftloop.clients.db import create_engine_for, migrate, session_factory
from driftloop.clients.db.models import EventRecord, PredictionFeedback, ServedPrediction
from driftloop.clients.objectstore import LocalObjectStore
from driftloop.contracts import layout
from driftloop.contracts.featuredefs import compute_features
from driftloop.contracts.pipeline import PipelineConfig, parse_pipeline
from driftloop.contracts.settings import ObjectStoreSettings
from driftloop.errors import ConfigError
from driftloop.services.training.fit import FitJob, fit_feature_set
from driftloop.services.training.labels import attach_labels, collect_feedback_labels, labels_digest

REPO = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 2, 1, tzinfo=UTC)


def feedback_pipeline() -> PipelineConfig:
    """The demo pipeline on a stream without its label field; labels come as feedback."""
    text = (REPO / "pipelines" / "transactions.yaml").read_text()
    cfg = parse_pipeline(text)
    stream = cfg.stream.model_copy(
        update={"label": None, "fields": [f for f in cfg.stream.fields if f.name != cfg.stream.label]}
    )
    data = cfg.model_dump(mode="json", exclude_defaults=False)
    data["stream"] = stream.model_dump(mode="json")
    data["model"]["labels_from"] = "feedback"
    data["quality"] = [rule for rule in data["quality"] if rule["field"] != cfg.stream.label]
    return PipelineConfig.model_validate(data)


def test_a_stream_without_label_needs_labels_from_feedback() -> None:
    text = (REPO / "pipelines" / "transactions.yaml").read_text()
    without_label = "\n".join(line for line in text.splitlines() if not line.strip().startswith("label:"))
    with pytest.raises(ConfigError, match="labels_from: feedback"):
        parse_pipeline(without_label)
    cfg = feedback_pipeline()
    assert cfg.stream.label is None and cfg.label_column == "label"
    with pytest.raises(ConfigError, match="unknown key"):
        parse_pipeline(text.replace("model:\n", "model:\n  labels_fromm: feedback\n", 1))


class Serving:
    """Writes what serving writes: a prediction row with its inputs, feedback rows. ``inputs_on_row=False``: what
    serving wrote before migration 0012, a prediction row without inputs and its PredictionLogged event in the
    event log."""

    def __init__(self, session_maker: Any, model: str, *, inputs_on_row: bool = True) -> None:
        self.Session, self.model = session_maker, model
        self.inputs_on_row = inputs_on_row
        self.clock = datetime(2026, 11, 1, tzinfo=UTC)

    def predict(self, request_id: str, entity: str, inputs: dict[str, Any], index: int = 0) -> None:
        self.clock += timedelta(seconds=1)
        with self.Session.begin() as session:
            session.add(
                ServedPrediction(
                    request_id=request_id,
                    row_index=index,
                    model=self.model,
                    version=1,
                    entity=entity,
                    prediction=0.5,
                    predicted_at=self.clock,
                    replica="r1",
                    inputs=inputs if self.inputs_on_row else None,
                )
            )
            if self.inputs_on_row:
                return
            payload = {"request_id": request_id, "model": self.model, "version": 1, "index": index}
            session.add(
                EventRecord(
                    event_id=f"ev-{request_id}-{index}",
                    event_type="PredictionLogged",
                    topic="t",
                    cascade_id="c",
                    producer="serving",
                    occurred_at=self.clock,
                    model=self.model,
                    payload={**payload, "inputs": inputs, "prediction": 0.5, "entity": entity},
                )
            )

    def feedback(self, request_id: str, actual: float, index: int = 0) -> None:
        self.clock += timedelta(seconds=1)
        with self.Session.begin() as session:
            count = session.scalar(sa.select(sa.func.count()).select_from(PredictionFeedback)) or 0
            session.add(
                PredictionFeedback(
                    event_id=f"fb-{count}",
                    model=self.model,
                    request_id=request_id,
                    row_index=index,
                    actual=actual,
                    received_at=self.clock,
                )
            )


@pytest.fixture(params=["inputs on the prediction row", "inputs in the event log (before 0012)"])
def serving(tmp_path: Path, request: pytest.FixtureRequest) -> Serving:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(url)
    return Serving(
        session_factory(create_engine_for(url)),
        feedback_pipeline().model.name,
        inputs_on_row=request.param.startswith("inputs on"),
    )


def rows(*keys: tuple[str, int]) -> pd.DataFrame:
    """Feature-set rows (entity, minutes after T0)."""
    return pd.DataFrame(
        {
            "customer_id": [k for k, _ in keys],
            "event_time": [(T0 + timedelta(minutes=m)).replace(tzinfo=None) for _, m in keys],
            "amount": np.arange(len(keys), dtype=float),
        }
    )


def at(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def test_a_label_reaches_only_the_row_it_was_given_for_and_is_counted_once(serving: Serving) -> None:
    cfg = feedback_pipeline()
    frame = rows(("a", 0), ("a", 5), ("b", 5), ("c", 9), ("c", 9), ("d", 1))
    serving.predict("p1", "a", {"customer_id": "a", "event_time": at(5)})  # row 1 only
    serving.predict("p2", "b", {"customer_id": "b", "event_time": at(5)})
    serving.predict("p3", "c", {"customer_id": "c", "event_time": at(9)})  # a row present twice
    serving.predict("p4", "a", {"customer_id": "a", "event_time": at(7)})  # no such row: reaches none
    serving.predict("p5", "x", {"customer_id": "x", "event_time": at(5)})  # unknown entity
    serving.predict("p6", "d", {"customer_id": "d", "event_time": at(1)})  # never answered
    serving.feedback("p1", 1.0)
    serving.feedback("p2", 0.0)
    serving.feedback("p2", 1.0)  # a correction: the newest counts, once
    serving.feedback("p3", 1.0)
    serving.feedback("p4", 0.0)
    serving.feedback("p5", 1.0)

    labels = collect_feedback_labels(serving.Session, cfg)
    assert sorted(labels["request_id"]) == ["p1", "p2", "p3", "p4", "p5"]  # one per labelled prediction
    assert labels.set_index("request_id").loc["p2", "label"] == 1.0
    labelled, attached = attach_labels(frame, labels, cfg)
    assert attached == 3
    assert labelled["label"].tolist()[:3] == [pytest.approx(np.nan, nan_ok=True), 1.0, 1.0]
    assert labelled["label"].notna().tolist() == [False, True, True, True, False, False]  # row 4 = row 3 again
    assert labelled["label"].notna().sum() == attached  # no label counted twice

    # Only feedback received before the run's start: a later answer is not in this run's snapshot.
    cutoff = serving.clock
    serving.predict("p7", "d", {"customer_id": "d", "event_time": at(1)})
    serving.feedback("p7", 1.0)
    assert "p7" not in set(collect_feedback_labels(serving.Session, cfg, cutoff=cutoff)["request_id"])
    assert labels_digest(collect_feedback_labels(serving.Session, cfg)) != labels_digest(labels)


def test_without_an_event_time_in_the_inputs_the_entitys_row_at_the_prediction_is_labelled(serving: Serving) -> None:
    cfg = feedback_pipeline()
    serving.clock = T0 + timedelta(minutes=6)  # predictions made at about minute 6
    serving.predict("q1", "a", {"customer_id": "a", "amount": 3.0})
    serving.predict("q2", "b", {"customer_id": "b"})
    # Epoch milliseconds (how Avro carries a timestamp) name the row exactly.
    serving.predict("q3", "c", {"customer_id": "c", "event_time": int((T0 + timedelta(minutes=9)).timestamp() * 1000)})
    serving.feedback("q1", 1.0)
    serving.feedback("q2", 0.0)
    serving.feedback("q3", 1.0)
    # a: rows at 0 and 5 (before the prediction) and 8 (after it); b: only a row after the prediction.
    frame = rows(("a", 0), ("a", 5), ("a", 8), ("b", 9), ("c", 9))
    labelled, attached = attach_labels(frame, collect_feedback_labels(serving.Session, cfg), cfg)
    assert attached == 2
    assert labelled["label"].notna().tolist() == [False, True, False, False, True]  # never a later row


def test_a_stream_without_labels_is_trained_on_its_feedback(serving: Serving, tmp_path: Path) -> None:
    cfg = feedback_pipeline()
    raw = raw_rows(800).drop(columns=["is_fraud"])
    truth = raw_rows(800)["is_fraud"]
    features = compute_features(raw, cfg)
    assert "is_fraud" not in features.columns and "label" not in features.columns
    store = LocalObjectStore(tmp_path / "objects")
    prefix = layout.feature_set_prefix(cfg.stream.name, 1)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(features, preserve_index=False), sink)
    store.put_bytes(f"{prefix}part-0.parquet", sink.getvalue().to_pybytes())
    answered = range(0, 800, 2)  # half the rows get an outcome
    for i in answered:
        inputs = {"customer_id": raw["customer_id"][i], "event_time": raw["event_time"][i].isoformat()}
        serving.predict(f"r{i}", raw["customer_id"][i], inputs)
        serving.feedback(f"r{i}", float(truth[i]))
    labels = collect_feedback_labels(serving.Session, cfg)
    sink2 = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(labels, preserve_index=False), sink2)
    store.put_bytes("runs/labels.parquet", sink2.getvalue().to_pybytes())

    job = FitJob(
        "run-fb",
        cfg,
        ObjectStoreSettings(type="local", path=tmp_path / "objects"),
        prefix,
        store.uri(prefix),
        f"{cfg.stream.name}@v1",
        labels_key="runs/labels.parquet",
        training_set_key="runs/training_set.parquet",
    )
    result = fit_feature_set(job)
    assert result.train_rows + result.holdout["rows"] == len(answered)
    trained = pd.read_parquet(store.local_path("runs/training_set.parquet"))
    by_key = dict(zip(pd.to_datetime(raw["event_time"], utc=True), truth, strict=True))
    trained_times = pd.to_datetime(trained["event_time"], utc=True)
    assert all(by_key[t] == y for t, y in zip(trained_times, trained["label"], strict=True))


def test_the_features_of_a_stream_without_label_have_no_label_column() -> None:
    from driftloop.services.features.materialize import feature_batch, feature_columns

    cfg = feedback_pipeline()
    raw = raw_rows(50).drop(columns=["is_fraud"])
    assert feature_columns(cfg) == ["customer_id", "event_time", *cfg.feature_names]
    assert list(feature_batch(raw, cfg).columns) == feature_columns(cfg)
