"""Initial schema, the built-in `internal` connection and the change generations.

Revision ID: 0001
Revises: 
"""

import datetime

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('roles', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=300), nullable=False),
    sa.Column('before', sa.JSON(), nullable=True),
    sa.Column('after', sa.JSON(), nullable=True),
    sa.Column('request_id', sa.String(length=128), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('internal_secrets',
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('current_version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('password_access',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('token_name', sa.String(length=128), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('secret', sa.String(length=512), nullable=False),
    sa.Column('version', sa.String(length=128), nullable=False),
    sa.Column('first_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_name', 'source', 'secret', 'version')
    )
    op.create_table('secret_providers',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('document', sa.JSON(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('service_state',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('smtp_settings',
    sa.Column('scope', sa.String(length=160), nullable=False),
    sa.Column('document', sa.JSON(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('scope')
    )
    op.create_table('internal_secret_versions',
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('ciphertext', sa.Text(), nullable=False),
    sa.Column('key_id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['name'], ['internal_secrets.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('name', 'version')
    )

    now = datetime.datetime.now(datetime.timezone.utc)
    connections = sa.table(
        "secret_providers",
        sa.column("name", sa.String),
        sa.column("document", sa.JSON),
        sa.column("version", sa.Integer),
        sa.column("updated_at", sa.DateTime(timezone=True)),
        sa.column("updated_by", sa.String),
    )
    op.bulk_insert(
        connections,
        [
            {
                "name": "internal",
                "document": {
                    "type": "internal",
                    "allowed_secrets": ["smtp/*"],
                    "cache_ttl_seconds": 300,
                    "max_stale_seconds": 86400,
                },
                "version": 1,
                "updated_at": now,
                "updated_by": "system",
            }
        ],
    )
    state = sa.table("service_state", sa.column("key", sa.String), sa.column("value", sa.BigInteger))
    op.bulk_insert(state, [{"key": "settings_generation", "value": 0}, {"key": "cache_generation", "value": 0}])


def downgrade() -> None:
    op.drop_table('internal_secret_versions')
    op.drop_table('smtp_settings')
    op.drop_table('service_state')
    op.drop_table('secret_providers')
    op.drop_table('password_access')
    op.drop_table('internal_secrets')
    op.drop_table('audit_events')
    op.drop_table('api_tokens')
