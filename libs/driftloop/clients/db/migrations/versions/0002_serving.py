"""serving: answered predictions and the feedback joined to them

Revision ID: 0002_serving
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_serving"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "serving_predictions",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("row_index", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("entity", sa.String(length=200), nullable=True),
        sa.Column("prediction", sa.Double(), nullable=False),
        sa.Column("predicted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replica", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("request_id", "row_index"),
    )
    op.create_index(
        "ix_serving_predictions_model_entity_time",
        "serving_predictions",
        ["model", "entity", "predicted_at"],
        unique=False,
    )
    op.create_table(
        "serving_feedback",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("row_index", sa.Integer(), nullable=False),
        sa.Column("actual", sa.Double(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("ix_serving_feedback_model", "serving_feedback", ["model"], unique=False)
    op.create_index("ix_serving_feedback_request_row", "serving_feedback", ["request_id", "row_index"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_serving_feedback_request_row", table_name="serving_feedback")
    op.drop_index("ix_serving_feedback_model", table_name="serving_feedback")
    op.drop_table("serving_feedback")
    op.drop_index("ix_serving_predictions_model_entity_time", table_name="serving_predictions")
    op.drop_table("serving_predictions")
