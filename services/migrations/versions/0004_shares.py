"""shares: links that let anyone holding them read one study for a while

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-14
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shares",
        # 32 hex digits: also the `jti` of every token the share's link mints.
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("study_uid", sa.String(64), nullable=False),
        # Orthanc's ID of the study, found when the share was made.
        sa.Column("study_id", sa.String(64), nullable=False),
        # A username, or `(zhiva-admin)` for the CLI.
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        # bcrypt of the PIN; NULL: the link opens without one.
        sa.Column("pin_hash", sa.String(100), nullable=True),
    )
    op.create_index("ix_shares_created_by", "shares", ["created_by"])


def downgrade() -> None:
    op.drop_index("ix_shares_created_by", table_name="shares")
    op.drop_table("shares")
