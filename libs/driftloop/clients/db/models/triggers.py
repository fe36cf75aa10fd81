"""Tables owned by the triggers service (others may read them, only it writes)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from driftloop.clients.db.models._base import Base, utcnow


class TrainingRequest(Base):
    __tablename__ = "training_requests"
    request_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    model: Mapped[str] = mapped_column(sa.String(200), index=True)
    trigger: Mapped[str] = mapped_column(sa.String(32))
    reason: Mapped[str] = mapped_column(sa.Text)
    cause_event_id: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    cascade_id: Mapped[str | None] = mapped_column(sa.String(64))
    dataset_version_id: Mapped[str | None] = mapped_column(sa.String(200))
    # pending (waiting for fresh data) | requested | suppressed (cooldown/duplicate/active run)
    status: Mapped[str] = mapped_column(sa.String(32))
    note: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When a pending request fired, or a decision was last changed.
    updated_at: Mapped[datetime | None]
    # When the cause happened: a pending drift fires only on data materialized after it.
    cause_occurred_at: Mapped[datetime | None]
    # The TrainingRequested event sent for this decision, if any (a run's RunStateChanged names it as its cause).
    event_id: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    # What a pending request waits for: "data" (the next dataset version) or "run" (the active run to end).
    wait_for: Mapped[str | None] = mapped_column(sa.String(16))
    # The model version an alarm was about (drift, performance): stale once another version is champion.
    version: Mapped[int | None]
    # A coalesced cause: the pending/requested request it was merged into.
    merged_into: Mapped[str | None] = mapped_column(sa.String(64))
    # Event time where the change began (the alarming window's start), carried to TrainingRequested.
    change_started_at: Mapped[datetime | None]
    # The outbox (services/triggers/outbox.py): the life of the TrainingRequested topic (its topic id) the event
    # is known to have been sent in, and when training was seen to have the request (then it is never sent again).
    published_in: Mapped[str | None] = mapped_column(sa.String(64))
    acknowledged_at: Mapped[datetime | None]


class TriggerStreamState(Base):
    """The latest materialized dataset version of a stream, as the triggers service saw it."""

    __tablename__ = "trigger_stream_state"
    stream: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    dataset_version_id: Mapped[str] = mapped_column(sa.String(200))
    event_id: Mapped[str] = mapped_column(sa.String(64))
    materialized_at: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # New rows (DatasetVersionCreated.new_rows) landed since the last new-data request (triggers.new_data).
    rows_since_request: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    # Every row landed (DatasetVersionCreated.new_rows), and the newest event time seen: the clocks of cooldowns
    # counted in rows and in event time.
    rows_total: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    max_event_time: Mapped[datetime | None]


class TriggerModelState(Base):
    """Per model: the champion, the active training runs and the last request (for cooldown)."""

    __tablename__ = "trigger_model_state"
    model: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    champion_version: Mapped[int | None]
    active_runs: Mapped[list] = mapped_column(default=list)
    last_request_at: Mapped[datetime | None]
    # Trigger kind -> ISO time of its last automatic request: the cooldown is per kind.
    last_request_by_kind: Mapped[dict] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Labels (FeedbackReceived) since the last labels decision (triggers.labels.every_n_labels).
    labels_since_request: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    # The last cron slot handled (triggers.schedule): a slot gives at most one request, even across restarts.
    last_schedule_slot: Mapped[datetime | None]
    # Runs that completed and wait for the gate (ModelPromoted/ModelRejected): causes stay coalesced until then.
    gating_runs: Mapped[list | None] = mapped_column(default=list)
    # When the gate last decided (ModelPromoted/ModelRejected): a run's "completed" read after a decision made after
    # it (the two come on different topics, in either order) does not wait for the gate again.
    gate_decided_at: Mapped[datetime | None]
    # Where the stream stood at the last automatic request (rows landed, event time): cooldowns by rows/event time.
    last_request_rows_total: Mapped[int | None] = mapped_column(sa.BigInteger)
    last_request_event_time: Mapped[datetime | None]
    # The follow-up retrains of the last located change (triggers.after_change): its first request, the change's
    # start, the stream's rows landed at that request and the follow-ups requested so far (policy.ChangePlan).
    change_plan: Mapped[dict | None] = mapped_column(default=None)
