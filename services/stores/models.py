"""The ORM mapping of the users table. Schema changes go through Alembic (services/migrations).

The columns a service reads are declared once, in services/domain/user.py; the mapping
below must map exactly those (and its own keys and timestamps), or importing this fails.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.domain.names import MAX_NAME_LENGTH
from services.domain.user import USER_COLUMNS


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH))
    username: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(100))
    can_edit: Mapped[bool] = mapped_column(default=False)
    is_admin: Mapped[bool] = mapped_column(default=False)
    disabled: Mapped[bool] = mapped_column(default=False)
    # Tokens carry the generation they were issued under; raising it revokes them all.
    token_generation: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=_now, onupdate=_now
    )


# Columns of the table that are not part of a user's record.
_BOOKKEEPING = {"id", "created_at", "updated_at"}


def _check_mapping() -> None:
    mapped = {column.key for column in User.__table__.columns} - _BOOKKEEPING
    if mapped != set(USER_COLUMNS):
        raise RuntimeError(
            f"User maps {sorted(mapped)} but UserRecord declares {sorted(USER_COLUMNS)}: "
            "change services/domain/user.py and this model together (and add a migration)"
        )


_check_mapping()
