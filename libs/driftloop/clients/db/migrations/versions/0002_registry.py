"""registry: version signature, tags and description; who moved an alias, why, and the event it sent

Revision ID: 0002_registry
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_registry"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("signature", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("tags", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("description", sa.Text(), nullable=True))
    with op.batch_alter_table("model_aliases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("moved_by", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("event", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_aliases", schema=None) as batch_op:
        batch_op.drop_column("event")
        batch_op.drop_column("reason")
        batch_op.drop_column("moved_by")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("description")
        batch_op.drop_column("tags")
        batch_op.drop_column("signature")
