"""users.subject: the OpenID Connect `sub`

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Only the two columns the backfill touches; the model may differ by the time this runs.
_users = sa.table("users", sa.column("id", sa.Integer()), sa.column("subject", sa.String(36)))


def upgrade() -> None:
    # Nullable first, so existing rows can take their value; batch mode because SQLite
    # cannot alter a column in place (it copies the table; PostgreSQL alters it).
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("subject", sa.String(36), nullable=True))
    # One uuid4 per row, made here: SQLite has no gen_random_uuid().
    connection = op.get_bind()
    ids = connection.execute(sa.select(_users.c.id).where(_users.c.subject.is_(None))).scalars()
    rows = [{"row_id": row_id, "new_subject": str(uuid.uuid4())} for row_id in ids]
    if rows:
        connection.execute(
            _users.update()
            .where(_users.c.id == sa.bindparam("row_id"))
            .values(subject=sa.bindparam("new_subject")),
            rows,
        )
    with op.batch_alter_table("users") as batch:
        batch.alter_column("subject", existing_type=sa.String(36), nullable=False)
        batch.create_index("ix_users_subject", ["subject"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_index("ix_users_subject")
        batch.drop_column("subject")
