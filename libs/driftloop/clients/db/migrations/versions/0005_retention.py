"""retention: indexes the periodic purges select on (prediction, feedback and processed-event ages)

Revision ID: 0005_retention
Revises: 0004_merge
"""

from alembic import op

revision = "0005_retention"
down_revision = "0004_merge"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_serving_predictions_predicted_at", "serving_predictions", ["predicted_at"])
    op.create_index("ix_serving_feedback_received_at", "serving_feedback", ["received_at"])
    op.create_index("ix_processed_events_consumer_processed_at", "processed_events", ["consumer", "processed_at"])


def downgrade() -> None:
    op.drop_index("ix_processed_events_consumer_processed_at", table_name="processed_events")
    op.drop_index("ix_serving_feedback_received_at", table_name="serving_feedback")
    op.drop_index("ix_serving_predictions_predicted_at", table_name="serving_predictions")
