"""monitor and triggers: per-version performance windows, promoted versions (guard), estimated performance on
drift reports; coalesced causes, alarm versions, gating runs, cooldowns by rows and event time

Revision ID: 0008_loop
Revises: 0007_ingestion_topic_id
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_loop"
down_revision = "0007_ingestion_topic_id"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("drift_reports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("performance", sa.JSON(), nullable=True))
    with op.batch_alter_table("monitor_feedback", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version_seq", sa.BigInteger(), nullable=True))
        batch_op.create_unique_constraint("uq_monitor_feedback_version_seq", ["model", "version", "version_seq"])
    with op.batch_alter_table("performance_reports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("version_window", sa.BigInteger(), nullable=True))
        batch_op.create_unique_constraint(
            "uq_performance_reports_version_window", ["model", "version", "version_window"]
        )
    op.create_table(
        "monitor_versions",
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("artifact_uri", sa.String(length=500), nullable=False),
        sa.Column("artifact_sha256", sa.String(length=64), nullable=False),
        sa.Column("dataset_version_id", sa.String(length=200), nullable=False),
        sa.Column("previous_version", sa.Integer(), nullable=True),
        sa.Column("rollback", sa.Boolean(), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model", "version"),
    )
    with op.batch_alter_table("training_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("merged_into", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("change_started_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("trigger_stream_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rows_total", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("max_event_time", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("trigger_model_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gating_runs", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("last_request_rows_total", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("last_request_event_time", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trigger_model_state", schema=None) as batch_op:
        batch_op.drop_column("last_request_event_time")
        batch_op.drop_column("last_request_rows_total")
        batch_op.drop_column("gating_runs")
    with op.batch_alter_table("trigger_stream_state", schema=None) as batch_op:
        batch_op.drop_column("max_event_time")
        batch_op.drop_column("rows_total")
    with op.batch_alter_table("training_requests", schema=None) as batch_op:
        batch_op.drop_column("change_started_at")
        batch_op.drop_column("merged_into")
        batch_op.drop_column("version")
    op.drop_table("monitor_versions")
    with op.batch_alter_table("performance_reports", schema=None) as batch_op:
        batch_op.drop_constraint("uq_performance_reports_version_window", type_="unique")
        batch_op.drop_column("version_window")
        batch_op.drop_column("version")
    with op.batch_alter_table("monitor_feedback", schema=None) as batch_op:
        batch_op.drop_constraint("uq_monitor_feedback_version_seq", type_="unique")
        batch_op.drop_column("version_seq")
    with op.batch_alter_table("drift_reports", schema=None) as batch_op:
        batch_op.drop_column("performance")
