"""ingestion: dataset versions record their dataset-level quality checks

Revision ID: 0003_ingestion
Revises: 0002_ingestion
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_ingestion"
down_revision = "0002_ingestion"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("checks", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.drop_column("checks")
