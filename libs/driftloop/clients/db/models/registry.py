"""Tables owned by the registry service (others may read them, only it writes)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from driftloop.clients.db.models._base import Base, utcnow


class ModelVersion(Base):
    __tablename__ = "model_versions"
    model: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    artifact_uri: Mapped[str] = mapped_column(sa.String(500))
    artifact_sha256: Mapped[str] = mapped_column(sa.String(64))
    dataset_version_id: Mapped[str] = mapped_column(sa.String(200))
    feature_set_uri: Mapped[str] = mapped_column(sa.String(500))
    metrics: Mapped[dict] = mapped_column(default=dict)
    lineage: Mapped[dict] = mapped_column(default=dict)
    gate: Mapped[dict] = mapped_column(default=dict)
    # registered | promoted | rejected | rolled_back (serving rolled it back; not a default rollback target)
    status: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Outbox: the events this version produced (ModelRegistered, then ModelPromoted/ModelRejected), stored in
    # the same transaction as the state they announce, so that a redelivery re-sends them with the same ids.
    outbox: Mapped[list] = mapped_column(default=list)
    decided_at: Mapped[datetime | None]
    # Input fields and types the model answers on, its features and its output (set at registration).
    signature: Mapped[dict | None]
    # User-set labels and text (PATCH /v1/models/{name}/versions/{v}); NULL reads as none.
    tags: Mapped[dict | None]
    description: Mapped[str | None] = mapped_column(sa.Text)


class ModelAlias(Base):
    __tablename__ = "model_aliases"
    model: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    alias: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    version: Mapped[int]
    event_id: Mapped[str | None] = mapped_column(sa.String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Who moved it (token name, or "registry" for the gate) and why; the ModelPromoted event it sent, re-sent
    # with the same id when the same move is asked again (e.g. after a failed publish).
    moved_by: Mapped[str | None] = mapped_column(sa.String(200))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    event: Mapped[dict | None]
