"""api idempotency keys

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 06:20:00.000000

``Idempotency-Key`` of the HTTP API (``api/idempotency.py``): one row per (principal, key) holding a hash of the
request it was first used with and the response to replay. A row without ``status_code`` is a request still in
progress (or one that crashed: see the module). The application role gets its privileges from the default
privileges migration 0006 set.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'api_idempotency_keys',
        sa.Column('principal', sa.String(length=128), nullable=False),
        sa.Column('key', sa.String(length=255), nullable=False),
        sa.Column('method', sa.String(length=8), nullable=False),
        sa.Column('path', sa.Text(), nullable=False),
        sa.Column('request_hash', sa.String(length=64), nullable=False),
        sa.Column('status_code', sa.Integer(), nullable=True),
        sa.Column('response', sa.dialects.postgresql.JSONB(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('principal', 'key'),
    )
    op.create_index('ix_api_idempotency_keys_created_at', 'api_idempotency_keys', ['created_at'])


def downgrade() -> None:
    op.drop_index('ix_api_idempotency_keys_created_at', table_name='api_idempotency_keys')
    op.drop_table('api_idempotency_keys')
