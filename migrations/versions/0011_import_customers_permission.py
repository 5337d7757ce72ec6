"""the customers.import permission (audience import, issue 17)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 08:50:00.000000

``customers.import`` lets a principal import customers and segment members (``campaigns import ...`` and the
``IMPORT_CUSTOMERS`` / ``IMPORT_SEGMENT`` commands): admins and marketers get it, auditors do not. Literal values
on purpose: a migration must not change when the code does. No schema change.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

PERMISSION = "customers.import"
ROLES = ("admin", "marketer")


def upgrade() -> None:
    grants = sa.table("role_permissions", sa.column("role_name", sa.String), sa.column("permission", sa.String))
    op.bulk_insert(grants, [{"role_name": role, "permission": PERMISSION} for role in ROLES])


def downgrade() -> None:
    op.execute(f"DELETE FROM role_permissions WHERE permission = '{PERMISSION}'")
