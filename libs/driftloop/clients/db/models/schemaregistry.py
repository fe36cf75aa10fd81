"""Tables owned by the schemaregistry service (others may read them, only it writes)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from driftloop.clients.db.models._base import Base


class RegistrySchema(Base):
    __tablename__ = "sr_schemas"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    schema_type: Mapped[str] = mapped_column(sa.String(32), default="AVRO")
    fingerprint: Mapped[str] = mapped_column(sa.String(64), unique=True)
    schema_text: Mapped[str] = mapped_column(sa.Text)


class RegistrySubjectVersion(Base):
    __tablename__ = "sr_subject_versions"
    subject: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True)
    schema_id: Mapped[int] = mapped_column(sa.ForeignKey("sr_schemas.id"))
    deleted: Mapped[bool] = mapped_column(default=False)


class RegistryConfig(Base):
    """Compatibility level per subject; the empty subject holds the global level."""

    __tablename__ = "sr_config"
    subject: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    compatibility: Mapped[str] = mapped_column(sa.String(32))
