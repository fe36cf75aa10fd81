"""serving: each served prediction row keeps the inputs the model saw (its database record; PredictionLogged events
are no longer copied to the event log). Rows recorded before have none: their inputs stay in the event log.

Revision ID: 0012_served_prediction_inputs
Revises: 0011_dead_letter_announced
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_served_prediction_inputs"
down_revision = "0011_dead_letter_announced"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("serving_predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("inputs", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("serving_predictions", schema=None) as batch_op:
        batch_op.drop_column("inputs")
