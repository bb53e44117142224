"""mailboxes: the warm-up's first sending day, the bounce window's start, paused sequences

Revision ID: 0008_mailboxes
Revises: 0007_oauth
Create Date: 2026-12-01
"""

from alembic import op
import sqlalchemy as sa


revision = "0008_mailboxes"
down_revision = "0007_oauth"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mailbox_states", schema=None) as batch_op:
        batch_op.add_column(sa.Column("first_send_day", sa.String(), nullable=True))
        batch_op.add_column(
            sa.Column("bounces_counted_from", sa.DateTime(timezone=True), nullable=True)
        )
    op.create_table(
        "sequence_pauses",
        sa.Column("sequence", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sequence"),
    )


def downgrade() -> None:
    op.drop_table("sequence_pauses")
    with op.batch_alter_table("mailbox_states", schema=None) as batch_op:
        batch_op.drop_column("bounces_counted_from")
        batch_op.drop_column("first_send_day")
