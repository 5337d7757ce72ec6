"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-29 17:27:26.832771
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('principal', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('campaign_id', sa.UUID(), nullable=True),
    sa.Column('detail', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_audit_log_campaign', 'audit_log', ['campaign_id', 'id'], unique=False)
    op.create_table('channels',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('provider', sa.String(length=64), nullable=False),
    sa.Column('rate_per_s', sa.Numeric(precision=10, scale=3), nullable=False),
    sa.Column('burst', sa.Integer(), nullable=False),
    sa.Column('config', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('enabled', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("kind IN ('whatsapp', 'sms', 'email')", name='ck_channels_kind'),
    sa.CheckConstraint('burst >= 1', name='ck_channels_burst_positive'),
    sa.CheckConstraint('rate_per_s > 0', name='ck_channels_rate_positive'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('uq_channels_enabled_kind', 'channels', ['kind'], unique=True, postgresql_where=sa.text('enabled'))
    op.create_table('customer_segments',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('customers',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('external_ref', sa.String(length=128), nullable=True),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('phone', sa.String(length=32), nullable=True),
    sa.Column('whatsapp', sa.String(length=32), nullable=True),
    sa.Column('timezone', sa.String(length=64), server_default=sa.text("'UTC'"), nullable=False),
    sa.Column('locale', sa.String(length=16), server_default=sa.text("'en'"), nullable=False),
    sa.Column('status', sa.String(length=16), server_default=sa.text("'active'"), nullable=False),
    sa.Column('opted_out_channels', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("opted_out_channels <@ ARRAY['whatsapp','sms','email']::text[]", name='ck_customers_opt_outs'),
    sa.CheckConstraint("status IN ('active', 'inactive', 'blocked')", name='ck_customers_status'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('external_ref')
    )
    op.create_table('outbox',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('event_id', sa.UUID(), nullable=False),
    sa.Column('topic', sa.String(length=255), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('event_type', sa.String(length=32), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_id')
    )
    op.create_index('ix_outbox_unpublished', 'outbox', ['id'], unique=False, postgresql_where=sa.text('published_at IS NULL'))
    op.create_table('processed_commands',
    sa.Column('command_id', sa.String(length=128), nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('command_id')
    )
    op.create_table('roles',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('templates',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), server_default=sa.text('1'), nullable=False),
    sa.Column('channel_kind', sa.String(length=16), nullable=False),
    sa.Column('locale', sa.String(length=16), server_default=sa.text("'en'"), nullable=False),
    sa.Column('subject', sa.Text(), nullable=True),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('variables', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('status', sa.String(length=16), server_default=sa.text("'draft'"), nullable=False),
    sa.Column('approved_by', sa.String(length=128), nullable=True),
    sa.Column('approved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("channel_kind IN ('whatsapp', 'sms', 'email')", name='ck_templates_channel_kind'),
    sa.CheckConstraint("status IN ('draft', 'pending', 'approved', 'rejected')", name='ck_templates_status'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name', 'version', 'locale', name='uq_templates_name_version_locale')
    )
    op.create_table('campaigns',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('channel_kind', sa.String(length=16), nullable=False),
    sa.Column('channel_id', sa.String(length=64), nullable=False),
    sa.Column('template_id', sa.BigInteger(), nullable=True),
    sa.Column('status', sa.String(length=16), server_default=sa.text("'draft'"), nullable=False),
    sa.Column('version', sa.Integer(), server_default=sa.text('1'), nullable=False),
    sa.Column('start_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('batch_size', sa.Integer(), server_default=sa.text('1000'), nullable=False),
    sa.Column('max_retries', sa.Integer(), server_default=sa.text('3'), nullable=False),
    sa.Column('backoff_base_s', sa.Double(), server_default=sa.text('1.0'), nullable=False),
    sa.Column('backoff_max_s', sa.Double(), server_default=sa.text('60.0'), nullable=False),
    sa.Column('retry_jitter', sa.Double(), server_default=sa.text('0.2'), nullable=False),
    sa.Column('failure_threshold', sa.Double(), server_default=sa.text('0.5'), nullable=False),
    sa.Column('failure_min_sample', sa.Integer(), server_default=sa.text('20'), nullable=False),
    sa.Column('locale', sa.String(length=16), server_default=sa.text("'en'"), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('activated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('expansion_cursor', sa.BigInteger(), nullable=True),
    sa.Column('expansion_done', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('total_recipients', sa.BigInteger(), nullable=True),
    sa.Column('skipped_recipients', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.CheckConstraint("status IN ('draft', 'scheduled', 'active', 'paused', 'completed', 'failed', 'cancelled')", name='ck_campaigns_status'),
    sa.CheckConstraint('batch_size BETWEEN 1 AND 10000', name='ck_campaigns_batch_size'),
    sa.CheckConstraint('failure_threshold BETWEEN 0 AND 1', name='ck_campaigns_failure_threshold'),
    sa.CheckConstraint('max_retries BETWEEN 0 AND 10', name='ck_campaigns_max_retries'),
    sa.ForeignKeyConstraint(['channel_id'], ['channels.id'], ),
    sa.ForeignKeyConstraint(['template_id'], ['templates.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_campaigns_due', 'campaigns', ['start_at'], unique=False, postgresql_where=sa.text("status = 'scheduled'"))
    op.create_index('ix_campaigns_status', 'campaigns', ['status'], unique=False)
    op.create_table('principals',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('role_name', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['role_name'], ['roles.name'], ),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('role_permissions',
    sa.Column('role_name', sa.String(length=64), nullable=False),
    sa.Column('permission', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['role_name'], ['roles.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('role_name', 'permission')
    )
    op.create_table('segment_members',
    sa.Column('segment_id', sa.BigInteger(), nullable=False),
    sa.Column('customer_id', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('segment_id', 'customer_id')
    )
    op.create_table('campaign_analytics',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('campaign_id', sa.UUID(), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('window_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('sent', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('failed', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('retried', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('skipped', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('cancelled', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('delivered', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('read', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('clicked', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('bounced', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('latency_count', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('latency_sum_ms', sa.Double(), server_default=sa.text('0'), nullable=False),
    sa.Column('latency_max_ms', sa.Double(), server_default=sa.text('0'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('campaign_id', 'window_start', name='uq_campaign_analytics_window', postgresql_nulls_not_distinct=True)
    )
    op.create_table('campaign_manual_recipients',
    sa.Column('campaign_id', sa.UUID(), nullable=False),
    sa.Column('customer_id', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], ),
    sa.PrimaryKeyConstraint('campaign_id', 'customer_id')
    )
    op.create_table('campaign_messages',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('campaign_id', sa.UUID(), nullable=False),
    sa.Column('channel_kind', sa.String(length=16), nullable=False),
    sa.Column('locale', sa.String(length=16), nullable=False),
    sa.Column('subject', sa.Text(), nullable=True),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('template_name', sa.String(length=128), nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('campaign_id', 'locale', name='uq_campaign_messages_locale')
    )
    op.create_table('campaign_recipient_log',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('campaign_id', sa.UUID(), nullable=False),
    sa.Column('recipient_id', sa.BigInteger(), nullable=False),
    sa.Column('message_id', sa.UUID(), nullable=False),
    sa.Column('channel_kind', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('failure_reason', sa.Text(), nullable=True),
    sa.Column('provider_message_id', sa.String(length=256), nullable=True),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("status IN ('claimed', 'retrying', 'sent', 'failed', 'skipped', 'cancelled')", name='ck_recipient_log_status'),
    sa.CheckConstraint('attempts >= 0', name='ck_recipient_log_attempts'),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('campaign_id', 'recipient_id', name='uq_recipient_log_campaign_recipient')
    )
    op.create_index('ix_recipient_log_campaign_status', 'campaign_recipient_log', ['campaign_id', 'status'], unique=False)
    op.create_index('ix_recipient_log_message_id', 'campaign_recipient_log', ['message_id'], unique=False)
    op.create_table('campaign_segments',
    sa.Column('campaign_id', sa.UUID(), nullable=False),
    sa.Column('segment_id', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['segment_id'], ['customer_segments.id'], ),
    sa.PrimaryKeyConstraint('campaign_id', 'segment_id')
    )

    # The default roles. Literal values on purpose: a migration must not change when code does.
    roles = sa.table("roles", sa.column("name", sa.String), sa.column("description", sa.Text))
    grants = sa.table("role_permissions", sa.column("role_name", sa.String), sa.column("permission", sa.String))
    op.bulk_insert(roles, [
        {"name": "admin", "description": "everything"},
        {"name": "marketer", "description": "create, send and read campaigns"},
        {"name": "auditor", "description": "read campaigns and the audit log"},
    ])
    every = ["campaigns.create", "campaigns.send", "campaigns.read", "campaigns.audit",
             "principals.manage", "templates.manage"]
    op.bulk_insert(grants, [{"role_name": "admin", "permission": p} for p in every]
                   + [{"role_name": "marketer", "permission": p}
                      for p in ("campaigns.create", "campaigns.send", "campaigns.read")]
                   + [{"role_name": "auditor", "permission": p} for p in ("campaigns.read", "campaigns.audit")])


def downgrade() -> None:
    op.drop_table('campaign_segments')
    op.drop_index('ix_recipient_log_message_id', table_name='campaign_recipient_log')
    op.drop_index('ix_recipient_log_campaign_status', table_name='campaign_recipient_log')
    op.drop_table('campaign_recipient_log')
    op.drop_table('campaign_messages')
    op.drop_table('campaign_manual_recipients')
    op.drop_table('campaign_analytics')
    op.drop_table('segment_members')
    op.drop_table('role_permissions')
    op.drop_table('principals')
    op.drop_index('ix_campaigns_status', table_name='campaigns')
    op.drop_index('ix_campaigns_due', table_name='campaigns', postgresql_where=sa.text("status = 'scheduled'"))
    op.drop_table('campaigns')
    op.drop_table('templates')
    op.drop_table('roles')
    op.drop_table('processed_commands')
    op.drop_index('ix_outbox_unpublished', table_name='outbox', postgresql_where=sa.text('published_at IS NULL'))
    op.drop_table('outbox')
    op.drop_table('customers')
    op.drop_table('customer_segments')
    op.drop_index('uq_channels_enabled_kind', table_name='channels', postgresql_where=sa.text('enabled'))
    op.drop_table('channels')
    op.drop_index('ix_audit_log_campaign', table_name='audit_log')
    op.drop_table('audit_log')
