"""monitor and triggers: durable monitoring windows (observations keyed by event id), feedback joined with
predictions, performance reports, window bounds/prediction drift/quality on drift reports; trigger state for
every-N-rows, every-N-labels, schedules and queued requests

Revision ID: 0002_monitor
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_monitor"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("drift_reports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("window_start", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("window_end", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("prediction_test", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("quality", sa.JSON(), nullable=True))
    op.create_table(
        "monitor_observations",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("event_time", sa.Double(), nullable=False),
        sa.Column("request_id", sa.String(length=200), nullable=False),
        sa.Column("row_index", sa.Integer(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("prediction", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
        sa.UniqueConstraint("model", "version", "seq"),
    )
    with op.batch_alter_table("monitor_observations", schema=None) as batch_op:
        batch_op.create_index("ix_monitor_observations_model_version_time", ["model", "version", "event_time"])
        batch_op.create_index(batch_op.f("ix_monitor_observations_request_id"), ["request_id"], unique=False)
    op.create_table(
        "monitor_feedback",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("request_id", sa.String(length=200), nullable=False),
        sa.Column("row_index", sa.Integer(), nullable=False),
        sa.Column("actual", sa.Double(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("prediction", sa.Double(), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
        sa.UniqueConstraint("model", "seq"),
    )
    with op.batch_alter_table("monitor_feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_monitor_feedback_request_id"), ["request_id"], unique=False)
    op.create_table(
        "performance_reports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("window_index", sa.BigInteger(), nullable=False),
        sa.Column("window_size", sa.Integer(), nullable=False),
        sa.Column("versions", sa.JSON(), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column("degraded", sa.Boolean(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model", "window_index"),
    )
    with op.batch_alter_table("performance_reports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_performance_reports_model"), ["model"], unique=False)
    with op.batch_alter_table("training_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("wait_for", sa.String(length=16), nullable=True))
    with op.batch_alter_table("trigger_stream_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rows_since_request", sa.BigInteger(), server_default="0", nullable=False))
    with op.batch_alter_table("trigger_model_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("labels_since_request", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("last_schedule_slot", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trigger_model_state", schema=None) as batch_op:
        batch_op.drop_column("last_schedule_slot")
        batch_op.drop_column("labels_since_request")
    with op.batch_alter_table("trigger_stream_state", schema=None) as batch_op:
        batch_op.drop_column("rows_since_request")
    with op.batch_alter_table("training_requests", schema=None) as batch_op:
        batch_op.drop_column("wait_for")
    with op.batch_alter_table("performance_reports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_performance_reports_model"))
    op.drop_table("performance_reports")
    with op.batch_alter_table("monitor_feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_monitor_feedback_request_id"))
    op.drop_table("monitor_feedback")
    with op.batch_alter_table("monitor_observations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_monitor_observations_request_id"))
        batch_op.drop_index("ix_monitor_observations_model_version_time")
    op.drop_table("monitor_observations")
    with op.batch_alter_table("drift_reports", schema=None) as batch_op:
        batch_op.drop_column("quality")
        batch_op.drop_column("prediction_test")
        batch_op.drop_column("window_end")
        batch_op.drop_column("window_start")
