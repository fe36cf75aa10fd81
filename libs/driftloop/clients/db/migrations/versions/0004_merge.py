"""merge the per-service branches of the first release into one head

Revision ID: 0004_merge
Revises: 0002_features, 0003_ingestion, 0002_monitor, 0002_registry, 0002_serving, 0002_training
"""

revision = "0004_merge"
down_revision = ("0002_features", "0003_ingestion", "0002_monitor", "0002_registry", "0002_serving", "0002_training")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
