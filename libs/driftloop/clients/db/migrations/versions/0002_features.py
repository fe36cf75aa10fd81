"""features: the streaming-feature worker's applied records (durable state of the online running aggregates)

Revision ID: 0002_features
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_features"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feature_stream_events",
        sa.Column("stream", sa.String(length=200), nullable=False),
        sa.Column("event_id", sa.String(length=300), nullable=False),
        sa.Column("entity", sa.String(length=500), nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("stream", "event_id"),
    )
    op.create_index("ix_feature_stream_events_entity", "feature_stream_events", ["stream", "entity", "event_time"])


def downgrade() -> None:
    op.drop_index("ix_feature_stream_events_entity", table_name="feature_stream_events")
    op.drop_table("feature_stream_events")
