"""replies: inbox cursors; mailbox unreachable reason

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from alembic import op
import sqlalchemy as sa


revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "inbox_cursors",
        sa.Column("mailbox", sa.String(), nullable=False),
        sa.Column("folder", sa.String(), nullable=False),
        sa.Column("uidvalidity", sa.Integer(), nullable=True),
        sa.Column("last_uid", sa.Integer(), nullable=False),
        sa.Column("polled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("mailbox", "folder"),
    )
    with op.batch_alter_table("mailbox_states", schema=None) as batch_op:
        batch_op.add_column(sa.Column("unreachable", sa.String(), nullable=True))


def downgrade() -> None:

    with op.batch_alter_table("mailbox_states", schema=None) as batch_op:
        batch_op.drop_column("unreachable")

    op.drop_table("inbox_cursors")
