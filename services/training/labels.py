"""Delayed labels as training data (``model.labels_from: feedback``).

An outcome posted to ``/v1/models/{name}/feedback`` names one served prediction (serving's tables
``serving_feedback`` -> ``serving_predictions``, read through the db models). The prediction's logged inputs (kept
on its ``serving_predictions`` row; for rows recorded before that, its ``PredictionLogged`` event in the event log)
say which record it scored: the entity and, when the client sent it, the record's event time. The label is joined
point-in-time to that record's row of the feature set:

- exactly on (entity, event time) when the logged inputs carry the event time;
- otherwise on the entity's newest row at or before the moment of the prediction (``predicted_at``).

Guarantees (tested): a label reaches only the row of the prediction it was given for (no other entity, no later
row), and is counted once: several feedback posts for one prediction keep the newest; several labelled
predictions of one row keep the newest feedback; a row appearing twice in a feature set is labelled once.
Only feedback received before ``cutoff`` (the run's start) is used, so a run's labels are a fixed snapshot.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from driftloop.clients.db.models import EventRecord, PredictionFeedback, ServedPrediction
from driftloop.contracts.payloads import PredictionLogged
from driftloop.contracts.pipeline import PipelineConfig

LABEL_COLUMNS = ["request_id", "row_index", "entity", "event_time", "predicted_at", "received_at", "label"]
_CHUNK = 500
LOG_MARGIN = timedelta(hours=1)


def _utc(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True, format="mixed").dt.as_unit("ns")


def _event_time(value: object) -> pd.Timestamp:
    """A logged input's event time: an ISO string, or epoch milliseconds (how Avro carries timestamps); NaT if
    missing or unreadable (the label then goes by the time of the prediction)."""
    try:
        if isinstance(value, bool) or value is None:
            return pd.NaT
        if isinstance(value, int | float):
            return pd.Timestamp(value, unit="ms", tz="UTC")
        stamp = pd.Timestamp(str(value))
        return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    except (ValueError, OverflowError):
        return pd.NaT


def _logged_inputs(
    session: Session, model: str, keys: set[tuple[str, int]], first: datetime, last: datetime
) -> dict[tuple[str, int], dict]:
    """The inputs of the predictions ``keys`` (request id, row) recorded without them (before migration 0012), from
    their PredictionLogged events, logged around the predictions' times (``first`` .. ``last``, with a margin for
    clocks and the recorder's batching)."""
    wanted = {request_id for request_id, _ in keys}
    found: dict[tuple[str, int], dict] = {}
    query = sa.select(EventRecord.payload).where(
        EventRecord.event_type == PredictionLogged.event_type,
        EventRecord.model == model,
        EventRecord.occurred_at >= first - LOG_MARGIN,
        EventRecord.occurred_at <= last + LOG_MARGIN,
    )
    for payload in session.scalars(query.execution_options(yield_per=_CHUNK)):
        request_id = payload.get("request_id")
        if request_id in wanted:
            key = (request_id, int(payload.get("index", 0)))
            if key in keys:
                found[key] = payload.get("inputs") or {}
    return found


def collect_feedback_labels(
    Session: sessionmaker[Session], pipeline: PipelineConfig, cutoff: datetime | None = None
) -> pd.DataFrame:
    """One row per labelled prediction of the model (the newest feedback for it): request id, row, entity, the
    record's event time (from the logged inputs; missing if not sent), predicted_at, received_at and label."""
    model, stream = pipeline.model.name, pipeline.stream
    query = (
        sa.select(
            PredictionFeedback.request_id,
            PredictionFeedback.row_index,
            PredictionFeedback.actual,
            PredictionFeedback.received_at,
            PredictionFeedback.event_id,
            ServedPrediction.entity,
            ServedPrediction.predicted_at,
            ServedPrediction.inputs,
        )
        .join(
            ServedPrediction,
            sa.and_(
                ServedPrediction.request_id == PredictionFeedback.request_id,
                ServedPrediction.row_index == PredictionFeedback.row_index,
            ),
        )
        .where(PredictionFeedback.model == model, ServedPrediction.model == model)
    )
    if cutoff is not None:
        query = query.where(PredictionFeedback.received_at <= cutoff)
    with Session() as session:
        rows = session.execute(query).all()
        feedback = pd.DataFrame(
            rows,
            columns=["request_id", "row_index", "label", "received_at", "event_id", "entity", "predicted_at", "inputs"],
        )
        if feedback.empty:
            return pd.DataFrame(columns=LABEL_COLUMNS)
        # Several posts for one prediction: the newest is the answer (a correction), counted once.
        feedback = (
            feedback.sort_values(["received_at", "event_id"])
            .drop_duplicates(["request_id", "row_index"], keep="last")
            .reset_index(drop=True)
        )
        keys = {
            (request_id, int(index))
            for request_id, index, kept in zip(
                feedback["request_id"], feedback["row_index"], feedback["inputs"], strict=True
            )
            if kept is None
        }
        inputs: dict[tuple[str, int], dict] = {}
        if keys:  # rows recorded before serving kept their inputs
            older = _utc(feedback["predicted_at"][feedback["inputs"].isna()])
            inputs = _logged_inputs(session, model, keys, older.min().to_pydatetime(), older.max().to_pydatetime())
    logged = [
        kept if kept is not None else inputs.get((request_id, int(index)), {})
        for request_id, index, kept in zip(
            feedback["request_id"], feedback["row_index"], feedback["inputs"], strict=True
        )
    ]
    feedback["entity"] = [
        str(item[stream.entity_key]) if item.get(stream.entity_key) is not None else entity
        for item, entity in zip(logged, feedback["entity"], strict=True)
    ]
    feedback["event_time"] = _utc(pd.Series([_event_time(item.get(stream.event_time)) for item in logged]))
    feedback["predicted_at"] = _utc(feedback["predicted_at"])
    feedback["received_at"] = _utc(feedback["received_at"])
    return feedback[LABEL_COLUMNS].reset_index(drop=True)


def labels_digest(labels: pd.DataFrame) -> str:
    """A hash of the labels a run uses: part of its fingerprint (new feedback is new information)."""
    digest = hashlib.sha256()
    for row in labels.sort_values(["request_id", "row_index"]).itertuples(index=False):
        digest.update(f"{row.request_id}|{row.row_index}|{row.label}\n".encode())
    return digest.hexdigest()


def attach_labels(frame: pd.DataFrame, labels: pd.DataFrame, pipeline: PipelineConfig) -> tuple[pd.DataFrame, int]:
    """``frame`` (a feature set) with its label column set from ``labels`` (``collect_feedback_labels``): rows
    without a label get none. Returns the frame and how many labels found a row."""
    stream, column = pipeline.stream, pipeline.label_column
    out = frame.reset_index(drop=True).copy()
    out[column] = pd.Series([float("nan")] * len(out), dtype="float64")
    if labels.empty or out.empty:
        return out, 0
    rows = pd.DataFrame(
        {
            "_row": range(len(out)),
            "entity": out[stream.entity_key].astype(str),
            "event_time": _utc(out[stream.event_time]),
        }
    )
    # A row present twice (same entity and event time) takes a label once: on its first occurrence.
    rows = rows.drop_duplicates(["entity", "event_time"], keep="first")
    labels = labels.sort_values(["received_at", "request_id", "row_index"])
    exact = labels[labels["event_time"].notna()]
    matched = exact.merge(rows, on=["entity", "event_time"], how="inner")
    by_time = labels[labels["event_time"].isna()]
    if not by_time.empty:
        # The record the prediction scored: the entity's newest row at or before the prediction.
        left = by_time.sort_values("predicted_at").drop(columns=["event_time"])
        right = rows.sort_values("event_time")
        asof = pd.merge_asof(
            left,
            right,
            left_on="predicted_at",
            right_on="event_time",
            by="entity",
            direction="backward",
        ).dropna(subset=["_row"])
        matched = pd.concat([matched, asof[matched.columns]], ignore_index=True)
    if matched.empty:
        return out, 0
    # Several labelled predictions of one row: the newest feedback wins; each label counted once.
    matched = matched.sort_values(["received_at", "request_id", "row_index"]).drop_duplicates("_row", keep="last")
    out.loc[matched["_row"].astype(int).to_numpy(), column] = matched["label"].to_numpy(dtype="float64")
    return out, len(matched)
