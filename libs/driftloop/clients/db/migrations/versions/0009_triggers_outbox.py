"""triggers: the outbox of training requests (the broker life a request was last sent in, and when training was
seen to have it); requests found by their event id

Revision ID: 0009_triggers_outbox
Revises: 0008_loop
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_triggers_outbox"
down_revision = "0008_loop"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("published_in", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_training_requests_event_id", ["event_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("training_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_training_requests_event_id")
        batch_op.drop_column("acknowledged_at")
        batch_op.drop_column("published_in")
