"""training: hyperparameter search trials and summary, artifacts with sha256, reruns

Revision ID: 0002_training
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_training"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trials", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("search", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("artifacts", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("rerun_of", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("rerun_of")
        batch_op.drop_column("artifacts")
        batch_op.drop_column("search")
        batch_op.drop_column("trials")
