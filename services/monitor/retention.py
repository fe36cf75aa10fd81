"""Retention of the monitor's observations (``monitor_observations``) and joined feedback (``monitor_feedback``).

An observation goes once its event time is older than ``monitor.observation_retention_days`` and none of these
still needs it: a window not closed yet (its column, seq or event time, is at or past the start of the window
after the last reported one of its model version; a version without any report keeps everything), the baseline
of prediction drift (the version's first reported window, reread after a restart), the numbering after a restart
(the newest row of the version), and the feedback join (a row without feedback is kept until it is older than
``serving.feedback_horizon_days`` too). Models without a pipeline config are left alone.

Feedback goes once older than the retention when it is joined and its performance window is reported (and it is
not the model's newest joined row: the numbering), or when it never found its prediction within the horizon."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from driftloop.clients.db.models import DriftReport, MonitorFeedback, MonitorObservation, PerformanceReport
from driftloop.contracts.pipeline import PipelineConfig, load_pipelines
from driftloop.contracts.settings import Settings
from driftloop.runtime.retention import cutoff, purge_in_batches, utcnow


def _needed_observation_bounds(
    conn: sa.Connection, pipeline: PipelineConfig, model: str, version: int
) -> tuple[Any, float, tuple[float, float] | None, int] | None:
    """(window column, start of the first open window, baseline window bounds, newest seq) of a model version;
    None when nothing of it may go (no window reported yet)."""
    spec = pipeline.monitor
    column = MonitorObservation.seq if spec.window_by == "count" else MonitorObservation.event_time
    of_version = (DriftReport.model == model, DriftReport.version == version)
    last = conn.scalar(sa.select(sa.func.max(DriftReport.window_index)).where(*of_version))
    if last is None:
        return None
    first = conn.execute(
        sa.select(DriftReport.window_start, DriftReport.window_end)
        .where(*of_version)
        .order_by(DriftReport.window_index)
        .limit(1)
    ).one()
    baseline = (
        None if first.window_start is None or first.window_end is None else (first.window_start, first.window_end)
    )
    newest = conn.scalar(
        sa.select(sa.func.max(MonitorObservation.seq)).where(
            MonitorObservation.model == model, MonitorObservation.version == version
        )
    )
    return column, (int(last) + 1) * spec.window_hop, baseline, int(newest or 0)


def purge_observations(
    engine: sa.Engine,
    pipelines: Mapping[str, PipelineConfig],
    *,
    retention_days: float,
    feedback_horizon_days: float,
    batch_rows: int,
    now: datetime | None = None,
) -> dict[str, int]:
    """Delete what the rules above allow; returns rows deleted per table."""
    now = now or utcnow()
    old = cutoff(now, retention_days)
    if old is None:
        return {"monitor_observations": 0, "monitor_feedback": 0}
    unjoined_old = cutoff(now, feedback_horizon_days) or now
    joined = sa.exists().where(
        MonitorFeedback.model == MonitorObservation.model,
        MonitorFeedback.request_id == MonitorObservation.request_id,
        MonitorFeedback.row_index == MonitorObservation.row_index,
        MonitorFeedback.seq.is_not(None),
    )
    with engine.connect() as conn:
        versions = conn.execute(sa.select(MonitorObservation.model, MonitorObservation.version).distinct()).all()
        bounds = {
            (model, version): _needed_observation_bounds(conn, pipelines[model], model, version)
            for model, version in versions
            if model in pipelines
        }
    observations = 0
    for (model, version), needed in bounds.items():
        if needed is None:
            continue
        column, open_start, baseline, newest = needed
        conditions = [
            MonitorObservation.model == model,
            MonitorObservation.version == version,
            MonitorObservation.event_time < old.timestamp(),
            MonitorObservation.seq < newest,
            column < open_start,
            sa.or_(joined, MonitorObservation.event_time < unjoined_old.timestamp()),
        ]
        if baseline is not None:
            conditions.append(sa.or_(column < baseline[0], column >= baseline[1]))
        expired = sa.and_(*conditions)
        observations += purge_in_batches(
            engine,
            "monitor_observations",
            MonitorObservation.event_id,
            expired,
            batch_rows,
        )
    return {
        "monitor_observations": observations,
        "monitor_feedback": _purge_feedback(engine, pipelines, old, unjoined_old, batch_rows),
    }


def _purge_feedback(
    engine: sa.Engine, pipelines: Mapping[str, PipelineConfig], old: datetime, unjoined_old: datetime, batch_rows: int
) -> int:
    with engine.connect() as conn:
        models = list(conn.execute(sa.select(MonitorFeedback.model).distinct()).scalars())
        reported = dict(
            conn.execute(
                sa.select(PerformanceReport.model, sa.func.max(PerformanceReport.window_index)).group_by(
                    PerformanceReport.model
                )
            )
            .tuples()
            .all()
        )
        newest = dict(
            conn.execute(
                sa.select(MonitorFeedback.model, sa.func.max(MonitorFeedback.seq)).group_by(MonitorFeedback.model)
            )
            .tuples()
            .all()
        )
    deleted = 0
    for model in models:
        if model not in pipelines:
            continue
        never_joined = sa.and_(MonitorFeedback.seq.is_(None), MonitorFeedback.received_at < unjoined_old)
        branches: list[sa.ColumnElement[bool]] = [never_joined]
        last_reported, newest_seq = reported.get(model), newest.get(model)
        if last_reported is not None and newest_seq is not None:
            closed_end = (int(last_reported) + 1) * pipelines[model].monitor.performance.window_size
            branches.append(sa.and_(MonitorFeedback.seq < closed_end, MonitorFeedback.seq < int(newest_seq)))
        expired = sa.and_(MonitorFeedback.model == model, MonitorFeedback.received_at < old, sa.or_(*branches))
        deleted += purge_in_batches(
            engine,
            "monitor_feedback",
            MonitorFeedback.event_id,
            expired,
            batch_rows,
        )
    return deleted


def purge(
    engine: sa.Engine, settings: Settings, pipelines: Mapping[str, PipelineConfig], now: datetime | None = None
) -> dict[str, int]:
    return purge_observations(
        engine,
        pipelines,
        retention_days=settings.monitor.observation_retention_days,
        feedback_horizon_days=settings.serving.feedback_horizon_days,
        batch_rows=settings.database.purge_batch_rows,
        now=now,
    )


def purge_with_pipelines(engine: sa.Engine, settings: Settings) -> dict[str, int]:
    """``purge`` with the pipeline configs of ``settings`` (the standalone task has no runtime)."""
    return purge(engine, settings, load_pipelines(settings.pipelines_dir))
