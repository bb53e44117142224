"""oauth: OAuth 2.0 grants of the mailboxes (tokens encrypted with [secrets] key_env)

Revision ID: 0007_oauth
Revises: 0009_held
Create Date: 2026-12-01
"""

from alembic import op
import sqlalchemy as sa


revision = "0007_oauth"
down_revision = "0009_held"  # the newest on main when this was merged
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "oauth_grants",
        sa.Column("mailbox", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("flow", sa.String(), nullable=False),
        sa.Column("client_id", sa.String(), nullable=True),
        sa.Column("scope", sa.Text(), nullable=True),
        sa.Column("refresh_token", sa.Text(), nullable=True),
        sa.Column("access_token", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("connected_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refreshes", sa.Integer(), nullable=False),
        sa.Column("rotations", sa.Integer(), nullable=False),
        sa.Column("broken", sa.String(), nullable=True),
        sa.Column("paused_reason", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("mailbox"),
    )


def downgrade() -> None:

    op.drop_table("oauth_grants")
