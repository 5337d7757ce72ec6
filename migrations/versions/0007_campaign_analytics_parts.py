"""campaign analytics parts

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 06:15:00.000000

One source partition's share of a ``campaign_analytics`` row, written with absolute values by the Faust
analytics (``streams/tally.py``): the row is the sum of its parts, so a crash, a rebalance or a replay that
writes a part again changes nothing, and a late outcome changes only its own partition's part.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

COUNTERS = ("sent", "failed", "retried", "skipped", "cancelled", "delivered", "read", "clicked", "bounced")


def upgrade() -> None:
    op.create_table(
        'campaign_analytics_parts',
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('campaign_id', sa.UUID(), nullable=False),
        sa.Column('window_start', sa.DateTime(timezone=True), nullable=True),
        sa.Column('source_partition', sa.Integer(), nullable=False),
        *[sa.Column(c, sa.BigInteger(), server_default=sa.text('0'), nullable=False) for c in COUNTERS],
        sa.Column('latency_count', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
        sa.Column('latency_sum_ms', sa.Double(), server_default=sa.text('0'), nullable=False),
        sa.Column('latency_max_ms', sa.Double(), server_default=sa.text('0'), nullable=False),
        sa.Column('src_offset', sa.BigInteger(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('campaign_id', 'window_start', 'source_partition', name='uq_campaign_analytics_parts',
                            postgresql_nulls_not_distinct=True),
    )


def downgrade() -> None:
    op.drop_table('campaign_analytics_parts')
