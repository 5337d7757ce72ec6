"""command keys

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 06:15:00.000000

``command_keys``: the HMAC-SHA256 keys upstream systems sign ``campaign.commands`` records with
(producers/command_auth.py). Each key belongs to one principal, which is the acting principal of every
command signed with it (never the payload's claim). Keys are rotated by creating a new one and revoking the
old once the upstream system has switched; a revoked key verifies nothing. The secret itself is stored (an
HMAC verifier needs it): the table is readable by the application role only, like the rest of the data.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'command_keys',
        sa.Column('id', sa.String(length=32), primary_key=True),
        sa.Column('principal', sa.String(length=128), sa.ForeignKey('principals.name', ondelete='CASCADE'),
                  nullable=False),
        sa.Column('secret', sa.String(length=128), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column('created_by', sa.String(length=128), nullable=False),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table('command_keys')
