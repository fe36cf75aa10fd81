"""ingestion: dead letters keep the original bytes and replay state, landed batches their compaction target,
HTTP idempotency keys

Revision ID: 0002_ingestion
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_ingestion"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("original", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("schema_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("replayed_into", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("landed_batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("compacted_into", sa.String(length=500), nullable=True))
    op.create_table(
        "ingestion_idempotency_keys",
        sa.Column("stream", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("stream", "key"),
    )


def downgrade() -> None:
    op.drop_table("ingestion_idempotency_keys")
    with op.batch_alter_table("landed_batches", schema=None) as batch_op:
        batch_op.drop_column("compacted_into")
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_column("replayed_at")
        batch_op.drop_column("replayed_into")
        batch_op.drop_column("schema_id")
        batch_op.drop_column("original")
