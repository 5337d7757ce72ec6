"""campaign message template parameters

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 10:00:00.000000

The rendered values of a template's variables, in the template's order, stored with the campaign's
content so the sender can hand them to providers that fill the template themselves (WhatsApp Cloud API
body parameters). Existing rows get an empty array: campaigns created before this revision keep
sending what they sent before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        'campaign_messages',
        sa.Column('template_parameters', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"),
                  nullable=False),
    )


def downgrade() -> None:
    op.drop_column('campaign_messages', 'template_parameters')
