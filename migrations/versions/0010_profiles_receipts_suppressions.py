"""customer profiles, delivery receipts, suppressions

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 08:20:00.000000

What personalised messages and delivery receipts need (issue 17):

* ``customers``: ``first_name``, ``last_name`` and free ``attributes`` (a JSON object) for per-recipient
  rendering and segmenting; a GIN index (``jsonb_path_ops``) serves containment queries on the attributes
  (``attributes @> '{"plan": "gold"}'``).
* ``campaigns.max_sms_segments``: a per-campaign ceiling on the SMS segments one message may take (NULL: the
  channel's own limit).
* ``campaign_recipient_log``: what the provider reported after the send (``delivered_at``, ``read_at``,
  ``bounced_at``, ``complained_at`` and the last ``provider_status``); receipts only ever fill a timestamp
  once, so an out-of-order or repeated receipt cannot regress them. ``provider_message_id`` gets an index: it
  is how a receipt finds its row.
* ``campaign_analytics.complained`` (the other receipt counters exist since 0001).
* ``suppressions``: addresses no campaign may send to on a channel (hard bounce, complaint, STOP reply, or by
  hand), honoured by expansion and by the sender's claim.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('customers', sa.Column('first_name', sa.String(length=128), nullable=True))
    op.add_column('customers', sa.Column('last_name', sa.String(length=128), nullable=True))
    op.add_column('customers', sa.Column('attributes', postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"),
                                         nullable=False))
    op.create_check_constraint('ck_customers_attributes_object', 'customers',
                               "jsonb_typeof(attributes) = 'object'")
    op.create_index('ix_customers_attributes', 'customers', ['attributes'], postgresql_using='gin',
                    postgresql_ops={'attributes': 'jsonb_path_ops'})

    op.add_column('campaigns', sa.Column('max_sms_segments', sa.Integer(), nullable=True))
    op.create_check_constraint('ck_campaigns_max_sms_segments', 'campaigns',
                               'max_sms_segments IS NULL OR max_sms_segments BETWEEN 1 AND 10')

    for column in ('delivered_at', 'read_at', 'bounced_at', 'complained_at'):
        op.add_column('campaign_recipient_log', sa.Column(column, sa.DateTime(timezone=True), nullable=True))
    op.add_column('campaign_recipient_log', sa.Column('provider_status', sa.String(length=32), nullable=True))
    op.create_index('ix_recipient_log_provider_message_id', 'campaign_recipient_log', ['provider_message_id'],
                    postgresql_where=sa.text('provider_message_id IS NOT NULL'))

    op.add_column('campaign_analytics', sa.Column('complained', sa.BigInteger(), server_default=sa.text('0'),
                                                  nullable=False))

    op.create_table(
        'suppressions',
        sa.Column('channel_kind', sa.String(length=16), nullable=False),
        sa.Column('address', sa.String(length=320), nullable=False),
        sa.Column('reason', sa.String(length=32), nullable=False),
        sa.Column('source', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('channel_kind', 'address'),
        sa.CheckConstraint("channel_kind IN ('whatsapp', 'sms', 'email')", name='ck_suppressions_channel'),
        sa.CheckConstraint("reason IN ('hard_bounce', 'complaint', 'stop_reply', 'unsubscribe', 'manual')",
                           name='ck_suppressions_reason'),
    )


def downgrade() -> None:
    op.drop_table('suppressions')
    op.drop_column('campaign_analytics', 'complained')
    op.drop_index('ix_recipient_log_provider_message_id', table_name='campaign_recipient_log')
    for column in ('provider_status', 'complained_at', 'bounced_at', 'read_at', 'delivered_at'):
        op.drop_column('campaign_recipient_log', column)
    op.drop_constraint('ck_campaigns_max_sms_segments', 'campaigns')
    op.drop_column('campaigns', 'max_sms_segments')
    op.drop_index('ix_customers_attributes', table_name='customers')
    op.drop_constraint('ck_customers_attributes_object', 'customers')
    op.drop_column('customers', 'attributes')
    op.drop_column('customers', 'last_name')
    op.drop_column('customers', 'first_name')
