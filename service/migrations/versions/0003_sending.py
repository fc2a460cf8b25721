"""Sending mail: token tenants, the delivery log (with its id blocks) and the Idempotency-Key table.

Revision ID: 0003_sending
Revises: 0002_event_keys
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_sending"
down_revision = "0002_event_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("tenants", sa.JSON(), nullable=True))
    op.create_table(
        "delivery_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=True),
        sa.Column("token_name", sa.String(length=128), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("envelope_from", sa.String(length=320), nullable=False),
        sa.Column("recipient_count", sa.Integer(), nullable=False),
        sa.Column("recipient_domains", sa.JSON(), nullable=False),
        sa.Column("notification", sa.String(length=64), nullable=True),
        sa.Column("message_id", sa.String(length=320), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("smtp_code", sa.Integer(), nullable=True),
        sa.Column("smtp_enhanced_code", sa.String(length=16), nullable=True),
        sa.Column("smtp_message", sa.String(length=512), nullable=True),
        sa.Column("accepted_count", sa.Integer(), nullable=True),
        sa.Column("rejected_count", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_delivery_log_tenant_id", "delivery_log", ["tenant", "id"])
    op.create_index("ix_delivery_log_at", "delivery_log", ["at"])
    counter = op.create_table(
        "delivery_id_blocks",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.bulk_insert(counter, [{"name": "delivery_log", "last_id": 0}])
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("token_name", sa.String(length=128), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("answer", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_name", "key_hash"),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("delivery_id_blocks")
    op.drop_index("ix_delivery_log_at", table_name="delivery_log")
    op.drop_index("ix_delivery_log_tenant_id", table_name="delivery_log")
    op.drop_table("delivery_log")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("tenants")
