"""Event keys: one per secret-manager connection that receives rotation events, stored as a hash.

Revision ID: 0002_event_keys
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_event_keys"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event_keys",
        sa.Column("provider", sa.String(length=128), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(["provider"], ["secret_providers.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("provider"),
    )


def downgrade() -> None:
    op.drop_table("event_keys")
