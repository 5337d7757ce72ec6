"""analytics_seen_outcomes dropped with the batch analytics stage

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30 18:30:00.000000

The Faust analytics (``streams/tally.py``, the worker's ``tally`` stage) deduplicate outcomes in a partition-local
Faust table and write absolute parts (``campaign_analytics_parts``, migration 0007); the batch stage that
inserted every outcome id here - one PostgreSQL row per recipient, kept forever - is gone. Upgrading a database the
batch stage counted: its ``campaign_analytics`` rows have no parts; the Faust group starts at the earliest retained
outcome and re-sums every row it touches from its parts (docs/architecture.md, "Faust analytics").
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table('analytics_seen_outcomes')  # its index goes with it


def downgrade() -> None:
    op.create_table(
        'analytics_seen_outcomes',
        sa.Column('outcome_id', sa.String(length=128), nullable=False),
        sa.Column('campaign_id', sa.UUID(), nullable=False),
        sa.PrimaryKeyConstraint('outcome_id'),
    )
    op.create_index('ix_analytics_seen_outcomes_campaign_id', 'analytics_seen_outcomes', ['campaign_id'], unique=False)
