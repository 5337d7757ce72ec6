"""channel breaker

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 06:00:00.000000

A provider account's breaker lives on its ``channels`` row, so every worker honours it and an operator can
close it by hand: ``paused_reason`` is NULL while the channel is closed (sending) and says why it is open
otherwise (``unauthorized``, ``transport_errors``...); ``probe_at`` is when the next half-open probe may be
sent, ``failed_probes`` how many probes failed since it opened (the probe delay doubles with each).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('channels', sa.Column('paused_reason', sa.Text(), nullable=True))
    op.add_column('channels', sa.Column('paused_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('channels', sa.Column('probe_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('channels', sa.Column('failed_probes', sa.Integer(), server_default=sa.text('0'), nullable=False))


def downgrade() -> None:
    for column in ('failed_probes', 'probe_at', 'paused_at', 'paused_reason'):
        op.drop_column('channels', column)
