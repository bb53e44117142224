"""tracking: opens and clicks are events, one row per message, kind, target and human or machine

Revision ID: 0010_tracking
Revises: 0008_mailboxes
Create Date: 2026-12-08
"""

from alembic import op
import sqlalchemy as sa


revision = "0010_tracking"
down_revision = "0008_mailboxes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dedup_key", sa.String(), nullable=True))
        batch_op.create_unique_constraint("uq_events_dedup_key", ["dedup_key"])
        batch_op.create_index("ix_events_kind_message", ["kind", "message_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_kind_message")
        batch_op.drop_constraint("uq_events_dedup_key", type_="unique")
        batch_op.drop_column("dedup_key")
