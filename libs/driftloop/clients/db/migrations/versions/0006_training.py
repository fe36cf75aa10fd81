"""training: run fingerprints (skip identical retrains), attempts and the request (resume interrupted runs)

Revision ID: 0006_training
Revises: 0005_retention
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_training"
down_revision = "0005_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fingerprint", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("skip_reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("request", sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f("ix_runs_fingerprint"), ["fingerprint"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_fingerprint"))
        batch_op.drop_column("request")
        batch_op.drop_column("attempts")
        batch_op.drop_column("skip_reason")
        batch_op.drop_column("fingerprint")
