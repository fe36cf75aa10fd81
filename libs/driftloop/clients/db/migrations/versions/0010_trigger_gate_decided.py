"""triggers: when the gate last decided for a model (a run's completion read after the decision is not gated again)

Revision ID: 0010_trigger_gate_decided
Revises: 0009_triggers_outbox
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_trigger_gate_decided"
down_revision = "0009_triggers_outbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("trigger_model_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gate_decided_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trigger_model_state", schema=None) as batch_op:
        batch_op.drop_column("gate_decided_at")
