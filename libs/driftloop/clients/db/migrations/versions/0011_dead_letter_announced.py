"""ingestion: when a dead letter's RecordRejected was known to be on the bus (the ingestion outbox announces the
others again); dead letters already in the event log count as announced

Revision ID: 0011_dead_letter_announced
Revises: 0010_trigger_gate_decided
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_dead_letter_announced"
down_revision = "0010_trigger_gate_decided"
branch_labels = None
depends_on = None

UNANNOUNCED = sa.text("announced_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("announced_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE dead_letters SET announced_at = created_at "
        "WHERE event_id IN (SELECT event_id FROM events)"  # the event log has them: delivered
    )
    op.create_index(
        "ix_dead_letters_unannounced",
        "dead_letters",
        ["id"],
        unique=False,
        postgresql_where=UNANNOUNCED,
        sqlite_where=UNANNOUNCED,
    )


def downgrade() -> None:
    op.drop_index("ix_dead_letters_unannounced", table_name="dead_letters")
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_column("announced_at")
