"""campaign message WhatsApp header parameters

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 08:45:00.000000

A WhatsApp template may have a text header with one parameter (the Cloud API's ``header`` component). Its
parameter is stored beside the body's (``template_parameters``), as a campaign value or a profile placeholder
the sender renders per recipient. Existing rows get an empty array: they had no header.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        'campaign_messages',
        sa.Column('header_parameters', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False),
    )


def downgrade() -> None:
    op.drop_column('campaign_messages', 'header_parameters')
