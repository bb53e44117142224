"""cluster: daemons, singletons, claim leases on messages, mailbox owners; 64-bit IMAP UIDs

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from alembic import op
import sqlalchemy as sa


revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "daemons",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mailboxes", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "singletons",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("owner_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_owner", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("mailbox_states", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("owner_until", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("inbox_cursors", schema=None) as batch_op:
        batch_op.alter_column("uidvalidity", type_=sa.BigInteger(), existing_nullable=True)
        batch_op.alter_column("last_uid", type_=sa.BigInteger(), existing_nullable=False)


def downgrade() -> None:

    with op.batch_alter_table("inbox_cursors", schema=None) as batch_op:
        batch_op.alter_column("last_uid", type_=sa.Integer(), existing_nullable=False)
        batch_op.alter_column("uidvalidity", type_=sa.Integer(), existing_nullable=True)
    with op.batch_alter_table("mailbox_states", schema=None) as batch_op:
        batch_op.drop_column("owner_until")
        batch_op.drop_column("owner")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("lease_until")
        batch_op.drop_column("lease_owner")
    op.drop_table("singletons")
    op.drop_table("daemons")
