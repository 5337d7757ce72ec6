"""api tokens, content approval, the new permissions, and the application role's grants

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 06:00:00.000000

* ``api_tokens``: a principal's API tokens, only the SHA-256 of the secret stored (campaigns/core/tokens.py).
* ``campaigns.content_approved_by`` / ``content_approved_at``: inline content must be approved before the
  campaign can be scheduled; existing campaigns were created under the old rule and count as approved by
  their creator.
* The permissions of issue 16 (channels, customers, pipeline read/replay, ownership override, unapproved
  content): every one for admin, ``pipeline.read`` for auditors. Literal values on purpose: a migration must
  not change when the code does.
* Audit-log indexes for ``campaigns audit --principal`` / ``--since``.
* Least privilege: when the application role (the ``app_role`` Alembic attribute, ``CAMPAIGNS_DATABASE__USER``)
  exists and is not the role running the migrations, it gets SELECT/INSERT/UPDATE/DELETE on the tables and
  USAGE on the sequences - now and, through default privileges, on every table later migrations create -
  but only SELECT on ``alembic_version`` and only SELECT/INSERT on ``audit_log`` (an append-only log).
  The role running the migrations (the schema owner) keeps ownership; the application role owns nothing.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import context, op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

NEW_ADMIN_PERMISSIONS = ["campaigns.manage_any", "content.send_unapproved", "channels.manage",
                         "customers.manage", "pipeline.read", "pipeline.replay"]


def upgrade() -> None:
    op.create_table('api_tokens',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('principal', sa.String(length=128), nullable=False),
    sa.Column('secret_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_by', sa.String(length=128), nullable=True),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['principal'], ['principals.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_api_tokens_principal', 'api_tokens', ['principal'], unique=False)
    op.add_column('campaigns', sa.Column('content_approved_by', sa.String(length=128), nullable=True))
    op.add_column('campaigns', sa.Column('content_approved_at', sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE campaigns SET content_approved_by = created_by, content_approved_at = created_at")
    op.create_index('ix_audit_log_principal', 'audit_log', ['principal', 'id'], unique=False)
    op.create_index('ix_audit_log_occurred_at', 'audit_log', ['occurred_at'], unique=False)
    grants = sa.table("role_permissions", sa.column("role_name", sa.String), sa.column("permission", sa.String))
    op.bulk_insert(grants, [{"role_name": "admin", "permission": p} for p in NEW_ADMIN_PERMISSIONS]
                   + [{"role_name": "auditor", "permission": "pipeline.read"}])
    _grant_app_role()


def _grant_app_role() -> None:
    role = context.config.attributes.get("app_role") if context.config is not None else None
    if not role:
        return
    if not re.fullmatch(r"[a-z_][a-z0-9_$]{0,62}", role):
        raise ValueError(f"app_role {role!r}: not a plain PostgreSQL role name")
    bind = op.get_bind()
    exists, is_self = bind.execute(
        sa.text("SELECT count(*) > 0, :role = current_user FROM pg_roles WHERE rolname = :role"), {"role": role}
    ).one()
    if not exists or is_self:
        return  # one role for everything (no separation to set up), or a role this cluster does not have
    for statement in (
        'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{r}"',
        'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{r}"',
        'ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "{r}"',
        'ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO "{r}"',
        'REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM "{r}"',
        'REVOKE UPDATE, DELETE ON audit_log FROM "{r}"',
    ):
        op.execute(statement.format(r=role))


def downgrade() -> None:
    op.execute("DELETE FROM role_permissions WHERE permission IN ("
               + ", ".join(f"'{p}'" for p in NEW_ADMIN_PERMISSIONS) + ")")
    op.drop_index('ix_audit_log_occurred_at', table_name='audit_log')
    op.drop_index('ix_audit_log_principal', table_name='audit_log')
    op.drop_column('campaigns', 'content_approved_at')
    op.drop_column('campaigns', 'content_approved_by')
    op.drop_index('ix_api_tokens_principal', table_name='api_tokens')
    op.drop_table('api_tokens')
