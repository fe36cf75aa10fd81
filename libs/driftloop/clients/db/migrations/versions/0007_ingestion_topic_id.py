"""ingestion: the Kafka topic id of each landed batch, so that replay detection survives a topic's reset

Revision ID: 0007_ingestion_topic_id
Revises: 0006_training
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_ingestion_topic_id"
down_revision = "0006_training"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("landed_batches", sa.Column("kafka_topic_id", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("landed_batches", "kafka_topic_id")
