"""campaign_recipient_log: no index on message_id

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 15:30:00.000000

No statement of the pipeline, the API or the CLI looks a recipient-log row up by ``message_id``: the senders find
rows by (campaign, recipient), the receipts by ``provider_message_id``. The index cost every claim - one INSERT
per recipient - a B-tree insert at a random position (message ids are UUIDv5), the kind of index write whose
cost grows with the table once it no longer fits in memory. An operator who has a message id has its campaign
(the logs carry both): ``WHERE campaign_id = ... AND message_id = ...`` walks the campaign's rows through the
unique (campaign_id, recipient_id) index.
"""

from __future__ import annotations

from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_recipient_log_message_id', table_name='campaign_recipient_log')


def downgrade() -> None:
    op.create_index('ix_recipient_log_message_id', 'campaign_recipient_log', ['message_id'], unique=False)
