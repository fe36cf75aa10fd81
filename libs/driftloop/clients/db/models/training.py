"""Tables owned by the training service (others may read them, only it writes)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from driftloop.clients.db.models._base import Base, utcnow


class Run(Base):
    __tablename__ = "runs"
    run_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    model: Mapped[str] = mapped_column(sa.String(200), index=True)
    state: Mapped[str] = mapped_column(sa.String(32), index=True)
    trigger: Mapped[str] = mapped_column(sa.String(32))
    cause_event_id: Mapped[str | None] = mapped_column(sa.String(64))
    cascade_id: Mapped[str | None] = mapped_column(sa.String(64))
    dataset_version_id: Mapped[str | None] = mapped_column(sa.String(200))
    params: Mapped[dict] = mapped_column(default=dict)
    metrics: Mapped[dict] = mapped_column(default=dict)
    artifact_uri: Mapped[str | None] = mapped_column(sa.String(500))
    artifact_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    code_version: Mapped[str | None] = mapped_column(sa.String(100))
    environment: Mapped[dict] = mapped_column(default=dict)
    resources: Mapped[dict] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(sa.Text)
    log_uri: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    # The feature set read and how its holdout was drawn (fraction, seed, rows): fixed per dataset version.
    feature_set_uri: Mapped[str | None] = mapped_column(sa.String(500))
    holdout: Mapped[dict] = mapped_column(default=dict)
    # Hyperparameter search: one entry per trial (config, status, scores per round "steps", early_stopped), and
    # the search's summary (searcher, metric, best trial and configuration, counts, seconds). Null: no search.
    trials: Mapped[list | None] = mapped_column(default=list)
    search: Mapped[dict | None] = mapped_column(default=dict)
    # name -> {uri, sha256, bytes}: model, feature list, training-set reference, plots, trials.
    artifacts: Mapped[dict | None] = mapped_column(default=dict)
    # A rerun (``driftloop runs rerun``) records the run it reproduces.
    rerun_of: Mapped[str | None] = mapped_column(sa.String(64))
    # What the run trains on, as one hash: dataset version + model, feature and label configuration (+ the training
    # window and the feedback labels, when used). A request whose fingerprint a run already has is skipped.
    fingerprint: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    # Why a run was skipped (state ``skipped``): e.g. the run that already trained on the same data and configuration.
    skip_reason: Mapped[str | None] = mapped_column(sa.Text)
    # Executions of the run: a run interrupted by a crash of the service is executed again once at its next start.
    attempts: Mapped[int] = mapped_column(default=1)
    # The TrainingRequested payload (Avro record as JSON), so that an interrupted run can be executed again.
    request: Mapped[dict | None]
