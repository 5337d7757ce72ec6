"""expanded recipients

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 06:40:00.000000

How many recipients the current expansion pass has produced (messages + skipped rows, or cancelled rows for
a sweep), accumulated in each page's checkpoint and reset with the cursor. When the pass ends it becomes
``total_recipients``: the audience actually expanded, not a recount that could include a customer added
behind the cursor (who would never get a row, leaving the campaign active forever).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('campaigns', sa.Column('expanded_recipients', sa.BigInteger(), server_default=sa.text('0'),
                                         nullable=False))


def downgrade() -> None:
    op.drop_column('campaigns', 'expanded_recipients')
