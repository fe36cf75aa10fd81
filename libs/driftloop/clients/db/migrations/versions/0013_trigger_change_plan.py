"""triggers: the follow-up retrains of a model's last located change (triggers.after_change)

Revision ID: 0013_trigger_change_plan
Revises: 0012_served_prediction_inputs
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_trigger_change_plan"
down_revision = "0012_served_prediction_inputs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("trigger_model_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("change_plan", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trigger_model_state", schema=None) as batch_op:
        batch_op.drop_column("change_plan")
