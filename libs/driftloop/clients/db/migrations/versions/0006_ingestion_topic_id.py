"""ingestion: the Kafka topic id of each landed batch, so that replay detection survives a topic's reset

Revision ID: 0006_ingestion_topic_id
Revises: 0005_retention
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_ingestion_topic_id"
down_revision = "0005_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("landed_batches", sa.Column("kafka_topic_id", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("landed_batches", "kafka_topic_id")
